"""Loading the configured splits of a task, with the checks every stage shares."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lrt.data.overlap import shared_questions
from lrt.data.prompt_limit import PromptLimit
from lrt.data.prompts import PromptConfig, target_text
from lrt.data.records import Record
from lrt.data.settings import DataConfig, SplitConfig
from lrt.data.tasks import load_task
from lrt.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def load_split(
    task: str, cfg: SplitConfig, on_error: str = "raise", options: Mapping[str, Any] | None = None
) -> list[Record]:
    """Load one configured split of a task (generator options only apply to `arith`)."""
    return load_task(
        cfg.task or task,
        str(cfg.split),
        path=cfg.path,
        limit=cfg.limit,
        on_error=on_error,
        **(options or {}),
    )


def load_train_val(data: DataConfig) -> tuple[list[Record], list[Record]]:
    """The training and validation records; with `val.from_train`, validation is a seeded
    slice of the whole training split (whatever `train.limit` is) and training the rest."""
    data.require_training_splits()
    assert data.train is not None and data.val is not None
    task, train, val = data.task, data.train, data.val
    on_error, options = data.on_error, data.options
    if not val.from_train:
        return load_split(task, train, on_error, options), load_split(task, val, on_error, options)
    records = load_split(task, replace(train, limit=None), on_error, options)
    assert val.limit is not None
    if val.limit >= len(records):
        raise ConfigError(
            f"data.val.limit={val.limit} carved from train leaves no training record: the "
            f"training split has {len(records)}"
        )
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(val.seed))
    held = set(order[: val.limit].tolist())
    kept = [r for i, r in enumerate(records) if i not in held]
    return kept[: train.limit], [records[i] for i in sorted(held)]


def check_val_is_not_test(data: DataConfig, val: list[Record]) -> None:
    """Refuse validation records whose question text is a test question (validation chooses
    `reasoner/best`), whatever file or slice they came from; the whole test split is compared,
    not only the `data.test.limit` questions a run reports on. Called once the training and
    validation records passed their own checks, so a bad training file is named first."""
    if data.test is None or data.allow_val_on_test:
        return
    try:
        test = load_split(data.task, replace(data.test, limit=None), data.on_error, data.options)
    except DataError as err:
        raise DataError(
            f"data.test, read at start to keep its questions out of validation: {err}"
        ) from None
    shared = shared_questions(val, test)
    if shared:
        assert data.val is not None
        where = data.val.path or ("a slice of train" if data.val.from_train else data.val.split)
        raise ConfigError(
            f"data.val ({where}) holds {len(shared)} of the test split's questions (compared "
            f"as normalised text, e.g. {shared[0].question[:60]!r}), so checkpoints would be "
            "chosen on test questions; validate on other questions (or set "
            "data.allow_val_on_test=true)"
        )


def load_limited_split(
    data: DataConfig,
    key: str,
    limit: PromptLimit,
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptConfig,
    system: str | None,
) -> list[Record]:
    """The records of `data.<key>`, each prompt within `limit`: what a stage trains or reports
    on outside the DataModule (the final held-out table, the TRL baseline's prompts)."""
    split = getattr(data, key)
    if split is None:
        raise ConfigError(f"data.{key} is null: this task has no {key} split")
    records = load_split(data.task, split, data.on_error, data.options)
    return limit.apply(records, tokenizer, prompt, system, f"data.{key}")


def with_targets(
    records: list[Record], prompt: PromptConfig, on_error: str, where: str
) -> list[Record]:
    """With `on_error=skip`, drop records that lack the text `prompt.target` trains on (OpenR1
    rows with no verified generation); otherwise `format_target` names the first one."""
    if on_error != "skip":
        return records
    kept = [r for r in records if target_text(r, prompt) is not None]
    if len(kept) < len(records):
        log.warning(
            "%s: skipped %d of %d records with no %s text (data.prompt.target=%s)",
            where,
            len(records) - len(kept),
            len(records),
            prompt.target,
            prompt.target,
        )
    if not kept:
        raise DataError(f"{where}: no record has {prompt.target} text to train on")
    return kept
