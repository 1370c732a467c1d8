"""SFT stage: maximise the answer's likelihood given the latents (DESIGN.md section 1)."""

from __future__ import annotations

import time

import torch

from lrt.latent_lm import LatentLM
from lrt.reasoner import latent_spread
from lrt.training.base import StageModule
from lrt.training.settings import SFTSettings

Batch = dict[str, torch.Tensor]


class SFTModule(StageModule):
    """Trains the reasoner only; validation reports teacher-forced loss and greedy accuracy.

    The loss is the mean negative log-likelihood over every answer token of the global batch,
    whatever the number of ranks and `micro_batch_size` (questions per forward/backward pass).
    """

    def __init__(self, lm: LatentLM, task: str, settings: SFTSettings, **run: int) -> None:
        super().__init__(lm, task, settings, **run)
        self._val_nll = torch.zeros(2, dtype=torch.float64)
        self._latents: list[torch.Tensor] = []

    def answer_nll(self, batch: Batch) -> torch.Tensor:
        """Summed negative log-likelihood of the batch's answer tokens; the latents are kept
        for the log of their spread."""
        return self.lm.sft_loss(
            batch["input_ids"],
            batch["attention_mask"],
            batch["answer_ids"],
            batch["answer_mask"],
            reduction="sum",
            on_latents=lambda z: self._latents.append(z.detach()),
        )

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        started = time.perf_counter()
        counted = (batch["slot"] >= 0).unsqueeze(1)  # padding rows of a rank's slice: no loss
        batch = {**batch, "answer_mask": batch["answer_mask"] * counted}
        b = batch["input_ids"].shape[0]
        size = self.settings.micro_batch_size or b
        chunks = [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, b, size)]
        tokens = self.all_sum(batch["answer_mask"].sum())
        self._latents = []
        loss = self.optimizer_step_on(chunks, self.answer_nll, tokens)
        self.log("train/loss", float(loss), prog_bar=True, batch_size=b)  # global already
        self.log("train/latent_spread", self.batch_spread(counted.squeeze(1)), batch_size=b)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=b)
        self.log("train/step_time_s", time.perf_counter() - started, batch_size=b)

    def batch_spread(self, counted: torch.Tensor) -> float:
        """The latents' spread across the counted questions of the whole global batch, gathered
        from every rank: what one process logs, where the mean of the ranks' (or micro-batches')
        own spreads would depend on how the batch is cut (and is NaN for cuts of one question)."""
        latents = self.all_gather(torch.cat(self._latents))
        counted = self.all_gather(counted.to(latents.device))
        if self.trainer.world_size > 1:  # [ranks, rows, ...] to [rows, ...]
            latents, counted = latents.flatten(0, 1), counted.flatten(0, 1)
        return latent_spread(latents[counted])

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_nll = torch.zeros(2, dtype=torch.float64)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Teacher-forced answer loss, plus the greedy accuracy every stage reports."""
        counted = (batch["slot"] >= 0).unsqueeze(1)
        masked = {**batch, "answer_mask": batch["answer_mask"] * counted}
        nll = self.answer_nll(masked)
        self._val_nll += torch.tensor([float(nll), float(masked["answer_mask"].sum())])
        super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        nll, tokens = self.all_sum(self._val_nll).tolist()
        if tokens:
            self.log("val/loss", nll / tokens, sync_dist=True)  # equal on every rank already
        super().on_validation_epoch_end()
