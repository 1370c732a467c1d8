"""Synthetic multi-step arithmetic word problems: a task that needs no download.

Difficulty is the number of operations, so accuracy per difficulty shows how much multi-step
reasoning the latents carry. Every value stays a small non-negative integer, so the answer is
unambiguous and a small model can read every number.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from lrt.data.records import Record
from lrt.errors import ConfigError, DataError

MAX_VALUE = 999
"""Every intermediate value stays in [0, MAX_VALUE]."""
OPERATIONS = ("add", "subtract", "multiply")

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 20000, "validation": 500, "test": 500}
_BASE_SEED = 1234
# Per split a distinct seed, and a disjoint hash bucket of question texts, so no question text
# can appear in two splits whatever sizes are requested.
_SPLIT_SEEDS = {split: _BASE_SEED * 10 + offset for offset, split in enumerate(SPLITS)}
_HELD_OUT_PERCENT = 5


def _bucket(question: str) -> str:
    """The split a question text belongs to: 5% validation, 5% test, the rest train."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 100
    if h < _HELD_OUT_PERCENT:
        return "test"
    if h < 2 * _HELD_OUT_PERCENT:
        return "validation"
    return "train"


@dataclass(frozen=True)
class ArithOptions:
    """The generator's settings (`data.options`): how many operations, and the largest
    numbers a problem uses. Smaller amounts make an easier task at the same number of
    operations; the default job's task is sized this way (`conf/data/arith.yaml`)."""

    min_ops: int = 1
    max_ops: int = 6
    max_start: int = 20
    """The start value is drawn from 1..max_start."""
    max_amount: int = 30
    """An added or subtracted amount is drawn from 1..max_amount."""
    max_factor: int = 5
    """A multiplier is drawn from 2..max_factor."""
    operations: tuple[str, ...] = OPERATIONS
    """Which operations a step may use (`[add, subtract]`: sums only)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "operations", tuple(self.operations))
        bad = [op for op in self.operations if op not in OPERATIONS]
        if bad or not self.operations:
            raise ConfigError(
                f"data.options.operations={list(self.operations)} must be a non-empty list of "
                f"{', '.join(OPERATIONS)}"
            )
        lowest = {
            "min_ops": 1,
            "max_ops": self.min_ops,
            "max_start": 1,
            "max_amount": 1,
            "max_factor": 2,
        }
        for name, low in lowest.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.options.{name}={value!r} must be an integer >= {low}")


def _problem(rng: random.Random, n_ops: int, options: ArithOptions) -> tuple[str, list[str], int]:
    """One problem with `n_ops` operations: (question, its steps, answer)."""
    value = rng.randint(1, options.max_start)
    sentences = [f"Start with {value}."]
    steps = []
    for _ in range(n_ops):
        possible = {
            "add": value < MAX_VALUE,
            "subtract": value >= 1,
            "multiply": value * 2 <= MAX_VALUE,
        }
        ops = [op for op in OPERATIONS if possible[op] and op in options.operations]
        if not ops:  # e.g. subtraction alone has reached 0: the problem ends here
            break
        op = rng.choice(ops)
        if op == "add":
            amount = rng.randint(1, min(options.max_amount, MAX_VALUE - value))
            sentences.append(f"Add {amount}.")
            new, sign = value + amount, "+"
        elif op == "subtract":
            amount = rng.randint(1, min(options.max_amount, value))
            sentences.append(f"Subtract {amount}.")
            new, sign = value - amount, "-"
        else:
            top = MAX_VALUE // value if value else options.max_factor
            amount = rng.randint(2, min(options.max_factor, top))
            sentences.append(f"Multiply by {amount}.")
            new, sign = value * amount, "*"
        steps.append(f"{value} {sign} {amount} = {new}.")
        value = new
    sentences.append("What is the result?")
    return " ".join(sentences), steps, value


def generate_arith(
    n: int,
    seed: int,
    min_ops: int = 1,
    max_ops: int = 6,
    *,
    keep: Callable[[str], bool] | None = None,
    **amounts: object,
) -> list[Record]:
    """`n` problems drawn deterministically from `seed`, difficulty uniform in [min_ops, max_ops].

    `amounts` are the other `ArithOptions` (`max_amount`, `max_factor`, ...). `keep` filters
    question texts (drawing goes on until `n` are kept); `load_arith` uses it to keep splits
    disjoint.
    """
    if n < 0:
        raise ConfigError(f"arith: n must be >= 0, got {n}.")
    if not 1 <= min_ops <= max_ops:
        raise ConfigError(f"arith: need 1 <= min_ops <= max_ops, got {min_ops} and {max_ops}.")
    options = ArithOptions(min_ops, max_ops, **amounts)
    rng = random.Random(seed)
    records: list[Record] = []
    for _ in range(100 * n + 1000):
        if len(records) == n:
            break
        question, steps, answer = _problem(rng, rng.randint(min_ops, max_ops), options)
        if keep is None or keep(question):
            records.append(
                Record(
                    id=f"arith/{seed}/{len(records)}",
                    question=question,
                    answer=str(answer),
                    solution=" ".join(steps),
                    steps=tuple(steps),
                )
            )
    if len(records) < n:
        raise DataError(
            f"arith: kept only {len(records)} of {n} problems; the filter is too strict."
        )
    return records


def load_arith(
    split: str,
    limit: int | None = None,
    **options: object,
) -> list[Record]:
    """The `arith` task's split: its own seed and its own hash bucket of question texts;
    `options` are `ArithOptions` fields (`conf/data/arith.yaml`)."""
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r} for task 'arith'; known splits: {SPLITS}.")
    n = SPLIT_SIZES[split] if limit is None else limit
    return generate_arith(n, _SPLIT_SEEDS[split], keep=lambda q: _bucket(q) == split, **options)
