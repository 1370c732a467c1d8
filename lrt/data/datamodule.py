"""LightningDataModule: records -> chat-templated prompts and answer targets -> padded batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from lrt.data.collate import pad_answers, pad_prompts
from lrt.data.prompts import PromptConfig, format_prompt, format_target, target_text
from lrt.data.records import Record
from lrt.data.tasks import load_task
from lrt.errors import ConfigError, DataError, reject_unknown_keys

log = logging.getLogger(__name__)


@dataclass
class SplitConfig:
    """One split of a task: hub split name, optional local JSONL path, optional row limit.

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


def split_config(raw: Mapping[str, Any], key: str) -> SplitConfig:
    reject_unknown_keys(raw, (f.name for f in fields(SplitConfig)), f"data.{key}")
    limit = raw.get("limit")
    if not _positive_int_or_none(limit):
        raise ConfigError(f"data.{key}.limit={limit} must be a positive integer or null")
    config = SplitConfig(**raw)
    if config.from_train:
        if key != "val":
            raise ConfigError(f"data.{key}.from_train is only for data.val")
        if config.limit is None:
            raise ConfigError("data.val.from_train needs data.val.limit: how many to carve")
    elif config.split is None:
        raise ConfigError(f"data.{key}.split must name a split (or set data.val.from_train)")
    return config


def _positive_int_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


LONG_PROMPT_POLICIES = ("error", "truncate")


@dataclass
class PromptLimit:
    """How long a chat-templated prompt may be (`data.max_prompt_tokens`, capped by what fits in
    the model's context) and what to do with a longer one (`data.on_long_prompt`)."""

    max_tokens: int | None = None
    on_long: str = "error"
    why: str = "data.max_prompt_tokens"
    """Where the limit comes from, for messages."""

    @classmethod
    def from_config(cls, data_cfg: Mapping[str, Any], budget: int | None) -> PromptLimit:
        """`budget`: prompt tokens the model's context leaves room for (None: no limit known)."""
        on_long = str(data_cfg.get("on_long_prompt", "error"))
        if on_long not in LONG_PROMPT_POLICIES:
            raise ConfigError(
                f"data.on_long_prompt={on_long!r} is not one of {LONG_PROMPT_POLICIES}"
            )
        wanted = data_cfg.get("max_prompt_tokens")
        if not _positive_int_or_none(wanted):
            raise ConfigError(f"data.max_prompt_tokens={wanted} must be a positive integer or null")
        if wanted is not None and budget is not None and wanted > budget:
            raise ConfigError(
                f"data.max_prompt_tokens={wanted} does not fit in the model's context, which "
                f"leaves {budget} tokens for the prompt"
            )
        if wanted is not None:
            return cls(wanted, on_long, f"data.max_prompt_tokens={wanted}")
        return cls(budget, on_long, "what the model's context leaves after latents and answer")

    def apply(
        self,
        records: Sequence[Record],
        tokenizer: PreTrainedTokenizerBase,
        prompt: PromptConfig,
        system: str | None,
        where: str,
    ) -> list[Record]:
        """The records, each prompt within the limit: an error naming the first one that is not,
        or (truncate) its question cut from the start, which keeps the ask at its end."""
        if self.max_tokens is None:
            return list(records)
        texts = [format_prompt(tokenizer, r, prompt, system) for r in records]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
        out: list[Record] = []
        cut = 0
        for record, n in zip(records, lengths, strict=True):
            if n <= self.max_tokens:
                out.append(record)
                continue
            if self.on_long == "error":
                raise DataError(
                    f"{where}: record {record.id!r} has a {n}-token prompt, over the limit of "
                    f"{self.max_tokens} ({self.why}); data.on_long_prompt=truncate cuts such "
                    "questions"
                )
            out.append(self._truncate(record, n, tokenizer, prompt, system, where))
            cut += 1
        if cut:
            log.warning(
                "%s: %d of %d prompts were longer than %d tokens; their questions were cut "
                "(data.on_long_prompt=truncate)",
                where,
                cut,
                len(records),
                self.max_tokens,
            )
        return out

    def _truncate(
        self,
        record: Record,
        n: int,
        tokenizer: PreTrainedTokenizerBase,
        prompt: PromptConfig,
        system: str | None,
        where: str,
    ) -> Record:
        assert self.max_tokens is not None
        ids = tokenizer(record.question, add_special_tokens=False).input_ids
        keep = len(ids)
        # Re-tokenising the cut text can merge tokens differently: cut again until it fits.
        while n > self.max_tokens:
            keep -= n - self.max_tokens
            if keep <= 0:
                raise DataError(
                    f"{where}: record {record.id!r} does not fit in {self.max_tokens} prompt "
                    f"tokens ({self.why}) even with its question cut entirely"
                )
            record = replace(record, question=tokenizer.decode(ids[len(ids) - keep :]))
            n = _prompt_tokens(tokenizer, record, prompt, system)
        return record


def _prompt_tokens(
    tokenizer: PreTrainedTokenizerBase, record: Record, prompt: PromptConfig, system: str | None
) -> int:
    text = format_prompt(tokenizer, record, prompt, system)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def load_split(
    task: str, cfg: SplitConfig, on_error: str, options: Mapping[str, Any]
) -> list[Record]:
    """Load one configured split of a task (generator options only apply to `arith`)."""
    return load_task(
        cfg.task or task, cfg.split, path=cfg.path, limit=cfg.limit, on_error=on_error, **options
    )


def load_train_val(
    task: str,
    train: SplitConfig,
    val: SplitConfig,
    on_error: str,
    options: Mapping[str, Any],
) -> tuple[list[Record], list[Record]]:
    """The training and validation records; with `val.from_train`, validation is a seeded
    slice of the whole training split (whatever `train.limit` is) and training the rest."""
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


def load_limited_split(
    data_cfg: Mapping[str, Any],
    key: str,
    limit: PromptLimit,
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptConfig,
    system: str | None,
) -> list[Record]:
    """The records of `data.<key>`, each prompt within `limit`: what a stage trains or reports
    on outside the DataModule (the final held-out table, the TRL baseline's prompts)."""
    records = load_split(
        str(data_cfg["task"]),
        split_config(data_cfg[key], key),
        str(data_cfg.get("on_error", "raise")),
        dict(data_cfg.get("options") or {}),
    )
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


class PromptDataset(Dataset):
    """(prompt text, target text, record index, slot) examples; tokenised in the collator.

    Samplers yield `(record index, slot)` keys: the slot is the example's position in the
    global batch (or, for evaluation, in the whole split), which GRPO's per-question noise and
    the evaluation's padding both need; padding examples of a rank's shard have slot -1.
    """

    def __init__(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        prompt: PromptConfig,
        system: str | None,
    ) -> None:
        self.records = records
        self.prompts = [format_prompt(tokenizer, r, prompt, system) for r in records]
        self.targets = [format_target(r, prompt) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int]) -> tuple[str, str, int, int]:
        i, slot = key
        return self.prompts[i], self.targets[i], i, slot


class Collator:
    """Pads a list of examples into the tensors `LatentLM.sft_loss` takes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[str, str, int, int]]) -> dict[str, torch.Tensor]:
        prompts, targets, index, slot = zip(*items, strict=True)
        input_ids, attention_mask = pad_prompts(self.tokenizer, list(prompts))
        answer_ids, answer_mask = pad_answers(self.tokenizer, list(targets))
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "answer_ids": answer_ids,
            "answer_mask": answer_mask,
            "index": torch.tensor(index),
            "slot": torch.tensor(slot),
        }


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank `rank`'s contiguous share of `items`; the first `len % world_size` ranks take one
    more, so the shares are disjoint and together are `items` in order."""
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Training batches as a pure function of (seed, step): exact resume needs no sampler state.

    Global batch `s` is slice `s` of an endless stream made of one seeded permutation per pass
    over the data, so a run restarted at step `start` draws exactly the batches an uninterrupted
    run would have drawn from there on. `batch_size` is the global batch (DESIGN.md section 6):
    under data parallelism rank r yields its own contiguous slice of every global batch, so the
    ranks together see each question of it exactly once, on any number of devices; when the
    batch does not divide evenly, the shorter slices are padded (slot -1) to the same length.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n <= 0:
            raise DataError("the training split is empty after filtering")
        if batch_size < world_size:
            raise ConfigError(
                f"stage.batch_size={batch_size} is the global batch and must be at least the "
                f"number of data-parallel processes ({world_size})"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size

    def batch(self, step: int) -> list[int]:
        """The global batch of `step`: dataset indices, in slot order."""
        out: list[int] = []
        position = step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(position, self.n)
            perm = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
            take = min(self.batch_size - len(out), self.n - offset)
            out += perm[offset : offset + take].tolist()
            position += take
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        width = -(-self.batch_size // self.world_size)
        for step in range(self.start, self.stop):
            keyed = list(enumerate(self.batch(step)))
            mine = [(i, slot) for slot, i in shard(keyed, self.rank, self.world_size)]
            # Equal lengths on every rank (FSDP's forwards are collectives): a rank with one
            # question fewer repeats its last one as padding, slot -1, which carries no loss.
            yield mine + [(mine[-1][0], -1)] * (width - len(mine))

    def __len__(self) -> int:
        """The whole run's batch count, not what is left: Lightning counts the run as one epoch
        and, on resume, restores how many of its batches are done; a shorter length would end
        that epoch early and replay this sampler from `start`."""
        return self.stop


class ShardedEvalSampler(Sampler[list[tuple[int, int]]]):
    """Batches of rank r's contiguous shard of an evaluation split, padded to equal length.

    Every rank gets the same number of batches of the same sizes (padding examples repeat the
    shard's last record with slot -1 and are not counted), because under FSDP every forward
    pass is a collective that all ranks must make together.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        keys = shard(list(range(n)), rank, world_size)
        width = -(-n // world_size)
        pad = [(keys[-1] if keys else 0, -1)] * (width - len(keys))
        items = [(i, i) for i in keys] + [(i, -1) for i, _ in pad]
        self.batches = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepDataLoader(DataLoader):
    """A DataLoader over a `StepBatchSampler`, which resumes from the restored step with no state
    of its own; saying so (empty state) stops Lightning warning that it cannot resume."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the sampler is rebuilt from `batches_done()`."""


class LRTDataModule(L.LightningDataModule):
    """Train and validation splits of one task, formatted for the base model's chat template."""

    def __init__(
        self,
        data_cfg: Mapping[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        system_prompt: str | None,
        batch_size: int,
        seed: int = 0,
        prompt_budget: int | None = None,
    ) -> None:
        """`prompt_budget`: prompt tokens the model's context leaves room for (None: unknown)."""
        super().__init__()
        self.task = str(data_cfg["task"])
        self.options = dict(data_cfg.get("options") or {})
        self.on_error = str(data_cfg.get("on_error", "raise"))
        self.train_cfg = split_config(data_cfg["train"], "train")
        self.val_cfg = split_config(data_cfg["val"], "val")
        self.prompt = PromptConfig(**dict(data_cfg["prompt"]))
        self.prompt_limit = PromptLimit.from_config(data_cfg, prompt_budget)
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: PromptDataset | None = None
        self.val_set: PromptDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        loaded = load_train_val(
            self.task, self.train_cfg, self.val_cfg, self.on_error, self.options
        )
        train, val = (
            self.prompt_limit.apply(
                with_targets(records, self.prompt, self.on_error, f"data.{key}"),
                self.tokenizer,
                self.prompt,
                self.system_prompt,
                f"data.{key}" + (f" ({split.path})" if split.path else ""),
            )
            for records, (key, split) in zip(
                loaded, (("train", self.train_cfg), ("val", self.val_cfg)), strict=True
            )
        )
        self.train_set = PromptDataset(train, self.tokenizer, self.prompt, self.system_prompt)
        self.val_set = PromptDataset(val, self.tokenizer, self.prompt, self.system_prompt)
        log.info("%s: %d train and %d validation records", self.task, len(train), len(val))

    @property
    def train_records(self) -> list[Record]:
        assert self.train_set is not None, "call setup() first"
        return self.train_set.records

    @property
    def val_records(self) -> list[Record]:
        assert self.val_set is not None, "call setup() first"
        return self.val_set.records

    def train_dataloader(self) -> DataLoader:
        """Batches from the current step to `max_steps` (the step is restored on resume)."""
        assert self.train_set is not None
        trainer = self.trainer
        module = trainer.lightning_module
        sampler = StepBatchSampler(
            len(self.train_set),
            self.batch_size,
            self.seed,
            module.batches_done(),
            module.total_batches(),
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        return StepDataLoader(
            self.train_set, batch_sampler=sampler, collate_fn=Collator(self.tokenizer)
        )

    def val_dataloader(self) -> DataLoader:
        """Rank r's shard of the validation split; the stage sums the counts over ranks."""
        assert self.val_set is not None
        sampler = ShardedEvalSampler(
            len(self.val_set), self.batch_size, self.trainer.global_rank, self.trainer.world_size
        )
        return DataLoader(self.val_set, batch_sampler=sampler, collate_fn=Collator(self.tokenizer))
