"""The baseline's rewards: the task's grader as 1/0, plus an optional length term."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from lrt.baselines.grpo_cot.settings import RewardSettings
from lrt.data.records import Record
from lrt.grading import grade

RewardFunc = Callable[..., list[float]]


def kimi_length_terms(
    lengths: Sequence[int], correct: Sequence[bool], groups: Sequence[Any]
) -> list[float]:
    """Kimi k1.5's length reward per completion, min/max taken over each question's group."""
    members: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    out = [0.0] * len(lengths)
    for rows in members.values():
        lo = min(lengths[i] for i in rows)
        hi = max(lengths[i] for i in rows)
        for i in rows:
            lam = 0.5 - (lengths[i] - lo) / (hi - lo) if hi > lo else 0.0
            out[i] = lam if correct[i] else min(0.0, lam)
    return out


def answer_part(completion: str, think_close: str, ended: bool) -> str:
    """What evaluation grades in `cot` (`Generation.answer_texts`), as far as a finished
    completion shows it: the text after its first close marker. A completion that `ended`
    (EOS) inside its thinking is the one evaluation budget-forces where it ended and grades on
    what it then answers, which TRL cannot ask for; its own text stands in (on arith the two
    gave the same verdict on all 500 test questions). One cut at the length limit inside its
    thinking never answered, so a number or `\\boxed{}` in its thinking earns nothing."""
    _, found, tail = completion.partition(think_close.strip())
    if found:
        return tail
    return completion if ended else ""


def reward_functions(
    task: str,
    records: Sequence[Record],
    reward: RewardSettings,
    max_completion_length: int,
    think_close: str,
) -> list[RewardFunc]:
    """TRL reward functions: `correctness`, and with a length penalty a second one, `length`.

    Each is called as `f(prompts=..., completions=..., completion_ids=..., record_index=...,
    **kw)` (TRL passes the dataset's extra columns as keyword lists) and returns one float per
    completion; TRL sums them. Two functions rather than one so TRL logs accuracy
    (`rewards/correctness/mean`) and the length term separately. The length function reuses
    the verdicts of the correctness call on the same completions instead of grading twice.
    Completions are thinking then answer (the prompt opens the span): only the answer after
    `think_close` is graded, as evaluation grades `cot` (`answer_part`).
    """
    last: dict[str, Any] = {"completions": None, "verdicts": []}

    def verdicts(
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        record_index: Sequence[int],
    ) -> list[bool]:
        if completions is not last["completions"]:
            last["verdicts"] = [
                grade(task, answer_part(text, think_close, len(ids) < max_completion_length),
                      records[int(i)])
                for text, ids, i in zip(completions, completion_ids, record_index, strict=True)
            ]  # fmt: skip
            last["completions"] = completions
        return last["verdicts"]

    def correctness(
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        record_index: Sequence[int],
        **_: Any,
    ) -> list[float]:
        return [float(v) for v in verdicts(completions, completion_ids, record_index)]

    funcs: list[RewardFunc] = [correctness]
    kind, coef = reward.length_penalty, reward.length_coef
    if kind == "none":
        return funcs

    def length(
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        record_index: Sequence[int],
        **_: Any,
    ) -> list[float]:
        correct = verdicts(completions, completion_ids, record_index)
        lengths = [len(ids) for ids in completion_ids]
        if kind == "linear":
            terms = [
                -n / max_completion_length if ok else 0.0
                for n, ok in zip(lengths, correct, strict=True)
            ]
        else:
            terms = kimi_length_terms(lengths, correct, record_index)
        return [coef * t for t in terms]

    length.__name__ = f"length_{kind}"
    funcs.append(length)
    return funcs
