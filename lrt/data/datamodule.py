"""LightningDataModule: records -> chat-templated prompts and answer targets -> padded batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from lrt.data.collate import pad_answers, pad_prompts
from lrt.data.prompts import PromptConfig, format_prompt, format_target
from lrt.data.records import Record
from lrt.data.tasks import load_task
from lrt.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class SplitConfig:
    """One split of a task: hub split name, optional local JSONL path, optional row limit."""

    split: str
    path: str | None = None
    limit: int | None = None


def split_config(raw: Mapping[str, Any], key: str) -> SplitConfig:
    known = {"split", "path", "limit"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key 'data.{key}.{unknown[0]}'")
    return SplitConfig(**raw)


def load_split(
    task: str, cfg: SplitConfig, on_error: str, options: Mapping[str, Any]
) -> list[Record]:
    """Load one configured split of a task (generator options only apply to `arith`)."""
    return load_task(task, cfg.split, path=cfg.path, limit=cfg.limit, on_error=on_error, **options)


class PromptDataset(Dataset):
    """(prompt text, target text, record index) triples; tokenised in the collator."""

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

    def __getitem__(self, i: int) -> tuple[str, str, int]:
        return self.prompts[i], self.targets[i], i


class Collator:
    """Pads a list of examples into the tensors `LatentLM.sft_loss` takes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[str, str, int]]) -> dict[str, torch.Tensor]:
        prompts, targets, index = zip(*items, strict=True)
        input_ids, attention_mask = pad_prompts(self.tokenizer, list(prompts))
        answer_ids, answer_mask = pad_answers(self.tokenizer, list(targets))
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "answer_ids": answer_ids,
            "answer_mask": answer_mask,
            "index": torch.tensor(index),
        }


class StepBatchSampler(Sampler[list[int]]):
    """Training batches as a pure function of (seed, step): exact resume needs no sampler state.

    Batch `s` is slice `s` of an endless stream made of one seeded permutation per pass over
    the data, so a run restarted at step `start` draws exactly the batches an uninterrupted
    run would have drawn from there on.
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
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size

    def batch(self, step: int) -> list[int]:
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

    def __iter__(self) -> Iterator[list[int]]:
        # Under data parallelism each rank takes its own slot of every global step.
        for step in range(self.start, self.stop):
            yield self.batch(step * self.world_size + self.rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class LRTDataModule(L.LightningDataModule):
    """Train and validation splits of one task, formatted for the base model's chat template."""

    def __init__(
        self,
        data_cfg: Mapping[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        system_prompt: str | None,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.task = str(data_cfg["task"])
        self.options = dict(data_cfg.get("options") or {})
        self.on_error = str(data_cfg.get("on_error", "raise"))
        self.train_cfg = split_config(data_cfg["train"], "train")
        self.val_cfg = split_config(data_cfg["val"], "val")
        self.prompt = PromptConfig(**dict(data_cfg["prompt"]))
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: PromptDataset | None = None
        self.val_set: PromptDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = load_split(self.task, self.train_cfg, self.on_error, self.options)
        val = load_split(self.task, self.val_cfg, self.on_error, self.options)
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
        module = self.trainer.lightning_module
        sampler = StepBatchSampler(
            len(self.train_set),
            self.batch_size,
            self.seed,
            module.batches_done(),
            module.total_batches(),
        )
        return DataLoader(
            self.train_set, batch_sampler=sampler, collate_fn=Collator(self.tokenizer)
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(
            self.val_set, batch_size=self.batch_size, collate_fn=Collator(self.tokenizer)
        )
