"""What every training stage shares: checkpoints that hold the reasoner only, and guards."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lrt.errors import CheckpointError, NonFiniteLossError
from lrt.grading import grade
from lrt.latent_lm import LatentLM

BASE_PREFIX = "lm.base."


class StageModule(L.LightningModule):
    """Base class for the SFT and GRPO modules.

    The frozen base stays registered (so Lightning moves it between devices and applies the
    precision plugin) but its weights are left out of checkpoints: they come from the model
    config, and a checkpoint records which base it belongs to.
    """

    def __init__(self, lm: LatentLM, task: str, val_max_answer_tokens: int = 16) -> None:
        super().__init__()
        self.lm = lm
        self.task = task
        self.val_max_answer_tokens = val_max_answer_tokens
        self._val_correct: list[bool] = []

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

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.global_step}; the last checkpoint is kept"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BASE_PREFIX)]:
            del state[key]
        checkpoint["lrt"] = {
            "base_model": self.lm.backbone.name,
            "reasoner_config": vars(self.reasoner.config).copy(),
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
        # Put the frozen base back so that loading stays strict for the reasoner's keys.
        base = {k: v for k, v in self.state_dict().items() if k.startswith(BASE_PREFIX)}
        checkpoint["state_dict"].update(base)
