"""LightningDataModule: records -> chat-templated prompts and answer targets -> padded batches."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from lrt.data.collate import answer_fits, pad_answers, pad_prompts
from lrt.data.loading import check_val_is_not_test, load_train_val, with_targets
from lrt.data.prompt_limit import PromptLimit
from lrt.data.prompts import PromptConfig, format_prompt, format_target
from lrt.data.records import Record
from lrt.data.samplers import ShardedEvalSampler, StepBatchSampler, StepDataLoader
from lrt.data.settings import DataConfig

log = logging.getLogger(__name__)


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
    """Pads a list of examples into the tensors `LatentLM.sft_loss` takes, each target cut to
    `max_target_tokens` (`data.max_target_tokens`; None: whole)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_target_tokens: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.max_target_tokens = max_target_tokens

    def __call__(self, items: list[tuple[str, str, int, int]]) -> dict[str, torch.Tensor]:
        prompts, targets, index, slot = zip(*items, strict=True)
        input_ids, attention_mask = pad_prompts(self.tokenizer, list(prompts))
        answer_ids, answer_mask = pad_answers(self.tokenizer, list(targets), self.max_target_tokens)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "answer_ids": answer_ids,
            "answer_mask": answer_mask,
            "index": torch.tensor(index),
            "slot": torch.tensor(slot),
        }


class LRTDataModule(L.LightningDataModule):
    """Train and validation splits of one task, formatted for the base model's chat template."""

    def __init__(
        self,
        data: DataConfig,
        tokenizer: PreTrainedTokenizerBase,
        system_prompt: str | None,
        batch_size: int,
        seed: int = 0,
        prompt_budget: int | None = None,
        val_batch_size: int | None = None,
    ) -> None:
        """`prompt_budget`: prompt tokens the model's context leaves room for (None: unknown);
        `val_batch_size`: validation questions per batch on a rank (None: `batch_size`)."""
        super().__init__()
        data.require_training_splits()
        self.data = data
        self.task = data.task
        self.prompt = data.prompt
        self.prompt_limit = PromptLimit.from_config(data, prompt_budget)
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.seed = seed
        self.train_set: PromptDataset | None = None
        self.val_set: PromptDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = {"train": self.data.train, "val": self.data.val}
        train, val = (
            self.prompt_limit.apply(
                with_targets(records, self.prompt, self.data.on_error, f"data.{key}"),
                self.tokenizer,
                self.prompt,
                self.system_prompt,
                f"data.{key}" + (f" ({split.path})" if split.path else ""),
            )
            for records, (key, split) in zip(load_train_val(self.data), splits.items(), strict=True)
        )
        check_val_is_not_test(self.data, val)
        self.train_set = PromptDataset(train, self.tokenizer, self.prompt, self.system_prompt)
        self.val_set = PromptDataset(val, self.tokenizer, self.prompt, self.system_prompt)
        log.info("%s: %d train and %d validation records", self.task, len(train), len(val))
        for key, dataset in (("train", self.train_set), ("val", self.val_set)):
            self._report_cut_targets(f"data.{key}", dataset.targets)

    def _report_cut_targets(self, where: str, targets: list[str]) -> None:
        """One log line per split: how many targets `data.max_target_tokens` cuts, so that a cap
        that cuts most answers (and so most of their ends) shows before training does."""
        cap = self.data.max_target_tokens
        if cap is None:
            return
        lengths = [len(ids) for ids in self.tokenizer(targets, add_special_tokens=False).input_ids]
        cut = sum(not answer_fits(n, cap) for n in lengths)
        log.info("%s: %d of %d targets cut to %d tokens", where, cut, len(targets), cap)

    def collator(self) -> Collator:
        """The batches of every loader: prompts and targets padded, targets within the cap."""
        return Collator(self.tokenizer, self.data.max_target_tokens)

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
        return StepDataLoader(self.train_set, batch_sampler=sampler, collate_fn=self.collator())

    def pool(self, step: int, size: int) -> list[int]:
        """`size` candidate questions for `step` (GRPO's dynamic sampling and difficulty
        selection), a pure function of (seed, step) like the plain batches."""
        assert self.train_set is not None
        return StepBatchSampler(len(self.train_set), size, self.seed, step, step + 1).batch(step)

    def collate_keys(self, keys: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """The batch of `(record index, slot)` keys, as the training loader would give it."""
        assert self.train_set is not None
        return self.collator()([self.train_set[k] for k in keys])

    def val_dataloader(self) -> DataLoader:
        """Rank r's shard of the validation split; the stage sums the counts over ranks."""
        assert self.val_set is not None
        sampler = ShardedEvalSampler(
            len(self.val_set),
            self.val_batch_size,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        return DataLoader(self.val_set, batch_sampler=sampler, collate_fn=self.collator())
