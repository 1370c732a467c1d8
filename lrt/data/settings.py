"""The `data` config group as typed settings: which task, its splits, its prompt, its limits.

Validation is the one place that knows a split can be carved from train (`val.from_train`),
can be borrowed from another task graded the same way (`task`), and must never be the test
split (validation chooses `reasoner/best`; on test questions every "best" figure would leak).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrt.data.prompts import PromptConfig
from lrt.data.tasks import TASKS, get_task, resolve_local
from lrt.errors import ConfigError, DataError

ON_ERROR = ("raise", "skip")
LONG_PROMPT_POLICIES = ("error", "truncate")


def missing_data_message(key: str, path: Path) -> str:
    """One line for a data file that is not there: where it was looked for, the first folder on
    the way that is missing (usually the shared data folder itself), and how to point at it."""
    where = path.expanduser().absolute()
    folder = next((p for p in reversed(where.parents) if not p.exists()), None)
    gone = f", and the folder {folder} does not exist" if folder is not None else ""
    return (
        f"{key}={path} does not exist (looked for {where}{gone}); set LRT_DATA_DIR to the "
        f"folder holding the shared data (gsm8k/, math/, lsat/, ...) or {key} to the file"
    )


@dataclass
class SplitConfig:
    """One split of a task: hub split name, optional local file or folder, optional row limit.

    `task` loads the split from another task with the same grader. `from_train` (validation
    only) carves `limit` records out of the training split instead, a seeded slice (`seed`)
    that training then never sees: for datasets with no validation split of their own, whose
    test split must not choose checkpoints.
    """

    split: str | None = None
    path: str | None = None
    limit: int | None = None
    task: str | None = None
    from_train: bool = False
    seed: int = 0

    def check(self, key: str, task: str) -> None:
        """Value checks that need to know which split (`key`) of which task this is."""
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"data.{key}.limit={self.limit} must be a positive integer or null")
        if self.from_train:
            if key != "val":
                raise ConfigError(f"data.{key}.from_train is only for data.val")
            if self.limit is None:
                raise ConfigError("data.val.from_train needs data.val.limit: how many to carve")
        elif self.split is None:
            raise ConfigError(f"data.{key}.split must name a split (or set data.val.from_train)")
        if self.path is not None and not Path(self.path).exists():
            raise ConfigError(missing_data_message(f"data.{key}.path", Path(self.path)))
        other = self.task
        if other is None:
            return
        if other not in TASKS:
            known = ", ".join(sorted(TASKS))
            raise ConfigError(f"data.{key}.task={other!r} is not a known task ({known})")
        if TASKS[other].grader != TASKS[task].grader:
            raise ConfigError(
                f"data.{key}.task={other!r} is graded as {TASKS[other].grader!r}, but "
                f"data.task={task!r} as {TASKS[task].grader!r}"
            )

    def identity(self, task: str) -> tuple[str, str | None, str | None] | None:
        """(task, split, resolved local file or None for the hub) that this split reads, or
        None for a validation slice carved from the training split."""
        if self.from_train:
            return None
        task = self.task or task
        path = None
        if self.path is not None:
            try:
                local = resolve_local(get_task(task), str(self.split), Path(self.path))
                path = str(local.resolve())
            except DataError:
                path = str(Path(self.path).resolve())
        return task, self.split, path


@dataclass
class DataConfig:
    """`conf/data/*.yaml` (each file documents its own choices)."""

    task: str = "arith"
    options: dict[str, Any] = field(default_factory=dict)
    """Generator settings of a generated task (arith: `min_ops`, `max_ops`, ...)."""
    train: SplitConfig | None = None
    """None for an evaluation-only task (train.py refuses it)."""
    val: SplitConfig | None = None
    test: SplitConfig | None = None
    allow_val_on_test: bool = False
    """Let `val` read the test split (checkpoints then chosen on test questions)."""
    on_error: str = "raise"
    """`skip`: drop malformed rows (and rows without the SFT target), counted in a warning."""
    max_prompt_tokens: int | None = None
    """Longest chat-templated prompt; null: what the model's context leaves room for."""
    on_long_prompt: str = "error"
    """`error`, or `truncate`: cut a longer question's start to fit (counted in a warning)."""
    max_target_tokens: int | None = None
    """Longest trained answer target, in tokens with its EOS (null: no limit): a longer one
    keeps its first tokens and no EOS, counted per split in the log. A memory bound for long
    targets (OpenR1's responses run to thousands of tokens); decoding budgets are separate."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_answer_tokens: int = 32
    """The one answer budget of every no-thinking mode and `lrt` (and of `cot`'s answer after
    its thinking): validation, the held-out table and evaluate.py all decode this many."""

    def __post_init__(self) -> None:
        if self.max_answer_tokens <= 0:
            raise ConfigError(f"data.max_answer_tokens={self.max_answer_tokens} must be positive")
        if self.task not in TASKS:
            known = ", ".join(sorted(TASKS))
            raise ConfigError(f"data.task={self.task!r} is not a known task ({known})")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"data.on_error={self.on_error!r} is not one of {ON_ERROR}")
        if self.on_long_prompt not in LONG_PROMPT_POLICIES:
            raise ConfigError(
                f"data.on_long_prompt={self.on_long_prompt!r} is not one of {LONG_PROMPT_POLICIES}"
            )
        if self.max_prompt_tokens is not None and self.max_prompt_tokens <= 0:
            raise ConfigError(
                f"data.max_prompt_tokens={self.max_prompt_tokens} must be a positive integer "
                "or null"
            )
        if self.max_target_tokens is not None and self.max_target_tokens <= 0:
            raise ConfigError(
                f"data.max_target_tokens={self.max_target_tokens} must be a positive integer "
                "or null"
            )
        TASKS[self.task].check_options(self.options)
        for key in ("train", "val", "test"):
            split = getattr(self, key)
            if split is not None:
                split.check(key, self.task)

    def _check_val_is_not_test(self) -> None:
        if self.val is None or self.test is None or self.allow_val_on_test:
            return
        val, test = self.val.identity(self.task), self.test.identity(self.task)
        if val is not None and val == test:
            where = test[2] or f"hub split {test[1]!r}"
            raise ConfigError(
                f"data.val and data.test both read task {test[0]!r} from {where}, so "
                "checkpoints would be chosen on test questions; set data.val.from_train=true "
                "to carve a validation slice out of train (or data.allow_val_on_test=true)"
            )

    def require_training_splits(self) -> None:
        """What a training stage needs on top: a train and a validation split, and validation
        that does not read the test split (evaluation reads only `test`, so it is not held to
        this)."""
        for key in ("train", "val"):
            if getattr(self, key) is None:
                raise ConfigError(
                    f"data.{key} is null: data.task={self.task!r} is an evaluation-only task "
                    "here; train on another task and evaluate this one with evaluate.py"
                )
        self._check_val_is_not_test()
