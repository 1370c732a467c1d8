"""What every training stage shares: checkpoints that hold the reasoner only, and guards."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch

from lrt.errors import CheckpointError, NonFiniteLossError
from lrt.grading import grade
from lrt.latent_lm import LatentLM

log = logging.getLogger(__name__)

BASE_PREFIX = "lm.base."


class StageModule(L.LightningModule):
    """Base class for the SFT and GRPO modules.

    The frozen base stays registered (so Lightning moves it between devices and applies the
    precision plugin) but its weights are left out of checkpoints: they come from the model
    config, and a checkpoint records which base it belongs to.

    Exact resume: the data order is a function of (seed, step) (see `StepBatchSampler`), and so
    is the global RNG that dropout draws from, reseeded before every batch; what is left
    (weights, optimiser, scheduler, GRPO noise, skip count) is in the checkpoint.
    """

    def __init__(self, lm: LatentLM, task: str, val_max_answer_tokens: int = 16) -> None:
        super().__init__()
        self.lm = lm
        self.task = task
        self.val_max_answer_tokens = val_max_answer_tokens
        self._val_correct: list[bool] = []
        self.seed = 0
        self.skip_nonfinite = 0
        """How many batches with a non-finite loss or gradient may be skipped before stopping."""
        self.skipped_nonfinite = 0
        self._step_loss: torch.Tensor | None = None

    def configure_run(self, seed: int, skip_nonfinite: int) -> None:
        """Settings every stage takes from the run config (`seed`, `guard.skip_nonfinite`)."""
        self.seed = seed
        self.skip_nonfinite = skip_nonfinite

    @property
    def reasoner(self) -> torch.nn.Module:
        assert self.lm.reasoner is not None
        return self.lm.reasoner

    def batches_done(self) -> int:
        """Training batches consumed so far (restored on resume); picks the next batch."""
        return self.global_step

    def total_batches(self) -> int:
        """Training batches in the whole run."""
        return self.trainer.max_steps

    def on_validation_epoch_start(self) -> None:
        self._val_correct = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Greedy `lrt` answers on the fixed validation slice, graded by the task's grader."""
        prefix = self.lm.encode(batch["input_ids"], batch["attention_mask"])
        gen = self.lm.generate(prefix, "lrt", max_answer_tokens=self.val_max_answer_tokens)
        records = self.trainer.datamodule.val_records
        for i, text in zip(batch["index"].tolist(), gen.texts, strict=True):
            self._val_correct.append(grade(self.task, text, records[i]))

    def on_validation_epoch_end(self) -> None:
        if self._val_correct:
            acc = sum(self._val_correct) / len(self._val_correct)
            self.log("val/accuracy", acc, prog_bar=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed the global RNG from (seed, step, rank), so a resumed run draws the same dropout."""
        state = np.random.SeedSequence([self.seed, self.global_step, self.global_rank])
        torch.manual_seed(int(state.generate_state(1)[0]))

    def check_finite(self, loss: torch.Tensor) -> None:
        """Note the step's loss; `on_before_optimizer_step` stops or skips if it is not finite.

        The decision waits until after backward so that every data-parallel rank reaches it
        (a rank raising on its own would leave the others waiting in the gradient all-reduce).
        """
        self._step_loss = loss.detach()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop on, or skip, a step whose loss or gradients are not finite.

        Runs after backward and before the update, in automatic optimisation and in GRPO's
        manual `optimizer.step()` alike. A skipped step clears the gradients, so AdamW leaves
        every parameter and its moments untouched, yet still counts as a step: the schedule,
        the data order and resuming stay aligned with an uninterrupted run.
        """
        problem = self._nonfinite_problem(optimizer)
        self._step_loss = None
        if not self.trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            return
        problem = problem or "the loss or a gradient is not finite on another rank"
        step = self.global_step
        if self.skipped_nonfinite >= self.skip_nonfinite:
            raise NonFiniteLossError(
                f"{problem} at step {step}; training stopped and the last checkpoint is kept "
                f"({self.skipped_nonfinite} such batches skipped, "
                f"guard.skip_nonfinite={self.skip_nonfinite})"
            )
        self.skipped_nonfinite += 1
        optimizer.zero_grad(set_to_none=True)
        log.warning(
            "%s at step %d: batch skipped (%d of guard.skip_nonfinite=%d)",
            problem,
            step,
            self.skipped_nonfinite,
            self.skip_nonfinite,
        )

    def _nonfinite_problem(self, optimizer: torch.optim.Optimizer) -> str | None:
        """What is not finite in this step, or None."""
        loss = self._step_loss
        if loss is not None and not torch.isfinite(loss).all():
            return f"loss is {loss.item()}"
        # With a gradient scaler (fp16) overflowing gradients are expected: the scaler skips them.
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        grads = [g for g in grads if g is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            return "a gradient is not finite"
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BASE_PREFIX)]:
            del state[key]
        checkpoint["lrt"] = {
            "base_model": self.lm.backbone.name,
            "reasoner_config": vars(self.reasoner.config).copy(),
            "skipped_nonfinite": self.skipped_nonfinite,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("lrt")
        if meta is None:
            raise CheckpointError("checkpoint has no 'lrt' metadata: not written by lrt")
        if meta["base_model"] != self.lm.backbone.name:
            raise CheckpointError(
                f"checkpoint was trained for base model {meta['base_model']!r}, "
                f"not {self.lm.backbone.name!r}"
            )
        saved_k = meta["reasoner_config"]["num_latents"]
        if saved_k != self.reasoner.config.num_latents:
            raise CheckpointError(
                f"checkpoint has num_latents={saved_k}, but reasoner.num_latents="
                f"{self.reasoner.config.num_latents}"
            )
        self.skipped_nonfinite = meta.get("skipped_nonfinite", 0)
        # Put the frozen base back so that loading stays strict for the reasoner's keys.
        base = {k: v for k, v in self.state_dict().items() if k.startswith(BASE_PREFIX)}
        checkpoint["state_dict"].update(base)
