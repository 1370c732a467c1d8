"""SFT stage: maximise the answer's likelihood given the latents (DESIGN.md section 1)."""

from __future__ import annotations

from typing import Any

import torch

from lrt.evaluation import DecodeConfig
from lrt.grading import grade
from lrt.latent_lm import LatentLM
from lrt.training.base import StageModule
from lrt.training.optim import OptimConfig, configure


class SFTModule(StageModule):
    """Trains the reasoner only; validation reports teacher-forced loss and greedy accuracy."""

    def __init__(
        self,
        lm: LatentLM,
        task: str,
        optim: OptimConfig,
        max_steps: int,
        val_max_answer_tokens: int = 16,
    ) -> None:
        super().__init__(lm)
        self.task = task
        self.optim = optim
        self.max_steps = max_steps
        self.val_decode = DecodeConfig(max_answer_tokens=val_max_answer_tokens)
        self._val_correct: list[bool] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.lm.sft_loss(
            batch["input_ids"], batch["attention_mask"], batch["answer_ids"], batch["answer_mask"]
        )
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_correct = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        prefix = self.lm.encode(batch["input_ids"], batch["attention_mask"])
        latents = self.lm.reason(prefix)
        logp = self.lm.answer_logprobs(
            prefix.fork(), latents, batch["answer_ids"], batch["answer_mask"]
        )
        loss = -logp.sum() / batch["answer_mask"].sum()
        self.log("val/loss", loss, batch_size=batch["input_ids"].shape[0])
        gen = self.lm.generate(
            prefix, "lrt", latents=latents, max_answer_tokens=self.val_decode.max_answer_tokens
        )
        records = self.trainer.datamodule.val_records
        for i, text in zip(batch["index"].tolist(), gen.texts, strict=True):
            self._val_correct.append(grade(self.task, text, records[i]))

    def on_validation_epoch_end(self) -> None:
        if self._val_correct:
            acc = sum(self._val_correct) / len(self._val_correct)
            self.log("val/accuracy", acc, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure(self.reasoner.parameters(), self.optim, self.max_steps)
