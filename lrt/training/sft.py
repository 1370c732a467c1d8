"""SFT stage: maximise the answer's likelihood given the latents (DESIGN.md section 1)."""

from __future__ import annotations

from typing import Any

import torch

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
        super().__init__(lm, task, val_max_answer_tokens)
        self.optim = optim
        self.max_steps = max_steps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.lm.sft_loss(
            batch["input_ids"], batch["attention_mask"], batch["answer_ids"], batch["answer_mask"]
        )
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Teacher-forced answer loss, plus the greedy accuracy every stage reports."""
        prefix = self.lm.encode(batch["input_ids"], batch["attention_mask"])
        logp = self.lm.answer_logprobs(
            prefix, self.lm.reason(prefix), batch["answer_ids"], batch["answer_mask"]
        )
        loss = -logp.sum() / batch["answer_mask"].sum()
        self.log("val/loss", loss, batch_size=batch["input_ids"].shape[0])
        super().validation_step(batch, batch_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure(self.reasoner.parameters(), self.optim, self.max_steps)
