"""Task registry: where each task's rows come from and how a row becomes a `Record`.

Hub rows (`datasets.load_dataset`) and local JSONL rows go through the same `parse_row`, so a
local copy of the data behaves exactly like the hub. Local files are read line by line here, so
a malformed row is reported by file and line number.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lrt.data.arith import SPLITS as ARITH_SPLITS
from lrt.data.arith import ArithOptions, load_arith
from lrt.data.parsers import (
    RowError,
    parse_competition,
    parse_deepscaler,
    parse_gsm8k,
    parse_gsm8k_aug,
    parse_lsat,
    parse_math,
    parse_openr1,
    parse_svamp,
)
from lrt.data.readers import HubSource, hub_rows, jsonl_rows, parquet_rows
from lrt.data.records import Record
from lrt.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What other code needs to know about a task.

    `grader` is the grading kind (`numeric`, `math` or `choice`, see `lrt.grading`). A dataset
    task has `parse_row`, `hub` (split -> hub source) and `local` (split -> file under the shared
    data folder, so `load_task(..., path=<data folder>)` finds it); a generated task has
    `generate(split, limit, **options)` and the `options` it accepts.
    """

    name: str
    grader: str
    splits: tuple[str, ...]
    parse_row: Callable[[Mapping[str, Any], str], Record] | None = None
    hub: Mapping[str, HubSource] = field(default_factory=dict)
    local: Mapping[str, str] = field(default_factory=dict)
    generate: Callable[..., list[Record]] | None = None
    options: type | None = None
    """A generated task's settings dataclass: its fields are the `data.options` keys, and
    building it checks their values."""

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse an option the task does not take, or a bad value, naming the key."""
        known = [f.name for f in fields(self.options)] if self.options else []
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"Unknown option {unknown[0]!r} for task {self.name!r}; known options: "
                f"{', '.join(known) or 'none'}."
            )
        if self.options is not None:
            self.options(**options)


def _lsat(name: str, subset: str, local: dict[str, str]) -> TaskSpec:
    return TaskSpec(
        name=name,
        grader="choice",
        splits=tuple(s for s in ("train", "validation", "test") if s in local),
        parse_row=parse_lsat,
        hub={"test": HubSource(f"hails/agieval-lsat-{subset}", None, "test")},
        local=local,
    )


TASKS: dict[str, TaskSpec] = {
    "gsm8k": TaskSpec(
        name="gsm8k",
        grader="numeric",
        splits=("train", "test"),
        parse_row=parse_gsm8k,
        hub={s: HubSource("openai/gsm8k", "main", s) for s in ("train", "test")},
        local={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    ),
    # GSM8K-Aug's equation-only CoT (RiM's steps); its 385k-row train split is not held locally.
    "gsm8k_aug": TaskSpec(
        name="gsm8k_aug",
        grader="numeric",
        splits=("validation", "test"),
        parse_row=parse_gsm8k_aug,
        local={"validation": "gsm8k_aug/valid.jsonl", "test": "gsm8k_aug/test.jsonl"},
    ),
    "math": TaskSpec(
        name="math",
        grader="math",
        splits=("train", "test"),
        parse_row=parse_math,
        hub={
            "train": HubSource("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
            "test": HubSource("HuggingFaceH4/MATH-500", None, "test"),
        },
        local={"train": "math/train.jsonl", "test": "math500/test.jsonl"},
    ),
    # `lsat` is LSAT-AR, the paper's LSAT benchmark; AR-LSAT files give its train/validation.
    "lsat": _lsat(
        "lsat",
        "ar",
        {
            "train": "ar_lsat/train_ar.jsonl",
            "validation": "ar_lsat/val_ar.jsonl",
            "test": "lsat/lsat-ar.jsonl",
        },
    ),
    "lsat_lr": _lsat(
        "lsat_lr", "lr", {"validation": "ar_lsat/val_lr.jsonl", "test": "lsat/lsat-lr.jsonl"}
    ),
    "lsat_rc": _lsat(
        "lsat_rc", "rc", {"validation": "ar_lsat/val_rc.jsonl", "test": "lsat/lsat-rc.jsonl"}
    ),
    # The paper's SFT data: train only (validate on MATH-500 with `data.val.task=math`).
    "openr1_math": TaskSpec(
        name="openr1_math",
        grader="math",
        splits=("train",),
        parse_row=parse_openr1,
        hub={"train": HubSource("open-r1/OpenR1-Math-220k", "default", "train")},
    ),
    # The paper's RL data: train only.
    "deepscaler": TaskSpec(
        name="deepscaler",
        grader="math",
        splits=("train",),
        parse_row=parse_deepscaler,
        hub={"train": HubSource("agentica-org/DeepScaleR-Preview-Dataset", None, "train")},
    ),
    "amc23": TaskSpec(
        name="amc23",
        grader="math",
        splits=("test",),
        parse_row=parse_competition,
        hub={"test": HubSource("math-ai/amc23", None, "test")},
        local={"test": "amc23/test.jsonl"},
    ),
    "aime24": TaskSpec(
        name="aime24",
        grader="math",
        splits=("test",),
        parse_row=parse_competition,
        hub={"test": HubSource("HuggingFaceH4/aime_2024", None, "train")},
        local={"test": "aime24/test.jsonl"},
    ),
    # SVAMP (Patel et al. 2021): 1000 one-step variations of school word problems, evaluation
    # only; a transfer test for reasoners trained on GSM8K.
    "svamp": TaskSpec(
        name="svamp",
        grader="numeric",
        splits=("test",),
        parse_row=parse_svamp,
        hub={"test": HubSource("tongyx361/svamp", None, "test")},
        local={"test": "svamp/test.jsonl"},
    ),
    "arith": TaskSpec(
        name="arith",
        grader="numeric",
        splits=ARITH_SPLITS,
        generate=load_arith,
        options=ArithOptions,
    ),
}


def get_task(name: str) -> TaskSpec:
    """The registered task, or a ConfigError listing the known ones."""
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]


def resolve_local(spec: TaskSpec, split: str, path: Path) -> Path:
    """A file is used as is; a folder must hold `{split}.jsonl`, `{split}.parquet` or the task's
    shared-data file."""
    if not path.is_dir():
        if not path.exists():
            raise DataError(f"Data file {path} does not exist.")
        return path
    candidates = [path / f"{split}.jsonl", path / f"{split}.parquet"]
    if split in spec.local:
        candidates.append(path / spec.local[split])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Data folder {path} has no {' or '.join(str(c) for c in candidates)} "
        f"for task {spec.name!r} split {split!r}."
    )


def load_task(
    name: str,
    split: str,
    path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    **options: Any,
) -> list[Record]:
    """The first `limit` records of a task's split, from `path` (a JSONL or Parquet file, or a
    folder) or the hub.

    `on_error="skip"` drops malformed rows with one warning per source instead of raising.
    `options` go to a generated task's generator (arith: `min_ops`, `max_ops`).
    """
    spec = get_task(name)
    if split not in spec.splits:
        raise ConfigError(
            f"Unknown split {split!r} for task {name!r}; known splits: {', '.join(spec.splits)}."
        )
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}.")
    spec.check_options(options)
    if spec.generate is not None:
        if path is not None:
            raise ConfigError(f"Task {name!r} is generated and takes no path (got {path!r}).")
        return spec.generate(split, limit, **options)
    assert spec.parse_row is not None

    if path is not None:
        source = str(resolve_local(spec, split, Path(path)))
        reader = parquet_rows if source.endswith(".parquet") else jsonl_rows
        rows = reader(Path(source))
    elif split in spec.hub:
        hub = spec.hub[split]
        source = f"hub dataset {hub.path} split {hub.split!r}"
        rows = hub_rows(hub)
    else:
        local = spec.local.get(split, f"{split}.jsonl")
        raise ConfigError(
            f"Task {name!r} split {split!r} has no hub source; pass path= to a local copy "
            f"(in the shared data folder: {local})."
        )

    records: list[Record] = []
    skipped: list[str] = []
    for index, (where, row) in enumerate(rows):
        try:
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, Mapping):
                raise RowError(None, f"is not a JSON object (got {type(row).__name__})")
            records.append(spec.parse_row(row, f"{name}/{split}/{index}"))
        except RowError as exc:
            message = f"{where}: {exc}."
            if on_error == "raise":
                raise DataError(message) from None
            skipped.append(message)
        if limit is not None and len(records) >= limit:
            break
    if skipped:
        log.warning(
            "Skipped %d malformed rows of %s for task %r (first: %s)",
            len(skipped),
            source,
            name,
            skipped[0],
        )
    if not records:
        raise DataError(f"No usable rows for task {name!r} split {split!r} in {source}.")
    return records
