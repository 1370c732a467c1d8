"""SFT stage: maximise the answer's likelihood given the latents (DESIGN.md section 1)."""

from __future__ import annotations

import time

import numpy as np
import torch

from lrt.lm.latent_lm import LatentLM
from lrt.training.base import StageModule
from lrt.training.latent_targets import chunk_means, colar_loss
from lrt.training.settings import SFTSettings

Batch = dict[str, torch.Tensor]


class SFTModule(StageModule):
    """Trains the reasoner only; validation reports teacher-forced loss and greedy accuracy.

    The loss is the mean negative log-likelihood over every answer token of the global batch,
    whatever the number of ranks and `micro_batch_size` (questions per forward/backward pass;
    the chunks group a rank's questions by answer length, `length_grouped_chunks`).
    """

    def __init__(self, lm: LatentLM, task: str, settings: SFTSettings, **run: int) -> None:
        super().__init__(lm, task, settings, **run)
        self._val_nll = torch.zeros(2, dtype=torch.float64)
        self._latents: list[torch.Tensor] = []
        self._tokens_per_row = 1.0
        """Global answer tokens per counted question of the step: turns the latent objective's
        per-question sum into the same units as the NLL's per-token sum."""

    def answer_nll(self, batch: Batch, training: bool = True) -> torch.Tensor:
        """Summed negative log-likelihood of the batch's answer tokens, plus in training the
        latent objective (`stage.latent_loss`) weighted per counted question. A training step
        keeps the latents for the log of their spread (validation does not: they would stay
        in memory until the next step)."""
        extra: list[torch.Tensor] = []

        def seen(z: torch.Tensor) -> None:
            if not training:
                return
            self._latents.append(z.detach())
            if self.settings.latent_loss == "colar":
                extra.append(self.colar_sum(z, batch))

        nll = self.lm.sft_loss(
            batch["input_ids"],
            batch["attention_mask"],
            batch["answer_ids"],
            batch["answer_mask"],
            reduction="sum",
            on_latents=seen,
            blind=batch.get("blind"),
        )
        if extra:
            nll = nll + self.settings.latent_loss_weight * self._tokens_per_row * extra[0]
        return nll

    def colar_sum(self, latents: torch.Tensor, batch: Batch) -> torch.Tensor:
        """`colar_loss` summed over the batch's counted questions, against their solutions'
        chunk means (`latent_targets.chunk_means`)."""
        records = self.trainer.datamodule.train_records
        texts = [records[i].solution or "" for i in batch["index"].tolist()]
        k = latents.shape[1]
        pairs = []
        with torch.no_grad():
            for ids in self.lm.tokenizer(texts, add_special_tokens=False).input_ids:
                ids_t = torch.tensor(ids, dtype=torch.long, device=latents.device)
                pairs.append(chunk_means(self.lm.backbone.embed(ids_t).float(), k))
        targets = torch.stack([t for t, _ in pairs])
        has = torch.stack([h for _, h in pairs])
        per_row = colar_loss(latents, targets, has, self.lm.backbone.embedding_rms())
        return (per_row * (batch["slot"] >= 0).to(per_row.dtype)).sum()

    def blind_rows(self, slots: torch.Tensor) -> torch.Tensor | None:
        """Which rows train with the question withheld from the base (`question_dropout`): a
        draw per place in the global batch from (seed, step), so the same questions on any
        number of ranks and on resume (padding rows, slot -1, never)."""
        if self.withheld:
            return torch.ones_like(slots, dtype=torch.bool)
        p = self.settings.question_dropout
        if p <= 0:
            return None
        state = np.random.SeedSequence([self.seed, self.global_step, 0x9D])
        gen = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
        draws = torch.rand(self.settings.batch_size, generator=gen)
        blind = (draws[slots.clamp(min=0).cpu()] < p) & (slots.cpu() >= 0)
        return blind.to(slots.device)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        started = time.perf_counter()
        counted = (batch["slot"] >= 0).unsqueeze(1)  # padding rows of a rank's slice: no loss
        batch = {**batch, "answer_mask": batch["answer_mask"] * counted}
        blind = self.blind_rows(batch["slot"])
        if blind is not None:
            batch["blind"] = blind
        b = batch["input_ids"].shape[0]
        chunks = length_grouped_chunks(batch, self.settings.micro_batch_size or b)
        tokens = self.all_sum(batch["answer_mask"].sum())
        questions = self.all_sum((batch["slot"] >= 0).sum())
        self._tokens_per_row = float(tokens / questions.clamp(min=1))
        self._latents = []
        loss = self.optimizer_step_on(chunks, self.answer_nll, tokens)
        self.log("train/loss", float(loss), prog_bar=True, batch_size=b)  # global already
        counted = torch.cat([chunk["slot"] for chunk in chunks]) >= 0  # the latents' row order
        self.log("train/latent_spread", self.batch_spread(counted), batch_size=b)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=b)
        self.log("train/step_time_s", time.perf_counter() - started, batch_size=b)

    def batch_spread(self, counted: torch.Tensor) -> float:
        """`latent_spread` of the counted questions of the whole global batch: what one process
        logs, where the mean of the ranks' (or micro-batches') own spreads would depend on how
        the batch is cut (and is NaN for cuts of one question). Reduced as sums (the mean
        latents, then the distances to them and the norms), not by gathering every latent."""
        z = torch.cat(self._latents).float()[counted.to(self._latents[0].device)]
        n = self.all_sum(float(z.shape[0]))
        if n < 2:
            return float("nan")
        mean = (self.all_sum(z.sum(0)) / n).to(z.dtype)
        sums = torch.stack([(z - mean).norm(dim=-1).sum(), z.norm(dim=-1).sum()])
        spread, norm = self.all_sum(sums).tolist()
        return spread / max(norm, 1e-12)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_nll = torch.zeros(2, dtype=torch.float64)

    grades_answers = True
    """Validation decodes and grades answers (`stage=reconstruct`'s target is no answer)."""
    withheld = False
    """Every row trains, and validates, with the question withheld (`stage=reconstruct`)."""

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Teacher-forced answer loss, plus the greedy accuracy every stage reports."""
        counted = (batch["slot"] >= 0).unsqueeze(1)
        masked = {**batch, "answer_mask": batch["answer_mask"] * counted}
        if self.withheld:
            masked["blind"] = torch.ones_like(batch["slot"], dtype=torch.bool)
        nll = self.answer_nll(masked, training=False)
        self._val_nll += torch.tensor([float(nll), float(masked["answer_mask"].sum())])
        if self.grades_answers:
            super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        nll, tokens = self.all_sum(self._val_nll).tolist()
        if tokens:
            self.log("val/loss", nll / tokens, sync_dist=True)  # equal on every rank already
        super().on_validation_epoch_end()


def length_grouped_chunks(batch: Batch, size: int) -> list[Batch]:
    """The micro-batches of `size` questions of one step: the rows sorted by answer length,
    then each chunk cut to its own longest prompt and answer (`trimmed`).

    With answers from tens to thousands of tokens (OpenR1), a chunk of the batch's rows in
    sampled order pads nearly every answer to the longest; grouped by length it pads far less.
    Rows are independent and the step's loss is a sum over tokens divided by the global token
    count, so the order and the cut leave the loss and its gradient unchanged. One chunk (no
    micro-batches) is the batch as it came, which has nothing to regroup.
    """
    b = batch["input_ids"].shape[0]
    if size >= b:
        return [batch]
    order = torch.argsort(batch["answer_mask"].sum(1), stable=True)
    rows = {k: v[order] for k, v in batch.items()}
    return [trimmed({k: v[i : i + size] for k, v in rows.items()}) for i in range(0, b, size)]


def trimmed(chunk: Batch) -> Batch:
    """`chunk` without the columns that are padding in all its rows: the prompts' first ones
    (left-padded; positions come from the mask, so no row's positions change) and the answers'
    last ones (right-padded; at least one column is kept, for a chunk with no counted token)."""
    start = int(chunk["attention_mask"].any(0).int().argmax())
    width = max(1, int(chunk["answer_mask"].sum(1).max()))
    return {
        **chunk,
        "input_ids": chunk["input_ids"][:, start:],
        "attention_mask": chunk["attention_mask"][:, start:],
        "answer_ids": chunk["answer_ids"][:, :width],
        "answer_mask": chunk["answer_mask"][:, :width],
    }
