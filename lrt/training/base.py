"""What every training stage shares: checkpoints that hold the reasoner only, and guards."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lrt.errors import CheckpointError, NonFiniteLossError
from lrt.latent_lm import LatentLM

BASE_PREFIX = "lm.base."


class StageModule(L.LightningModule):
    """Base class for the SFT and GRPO modules.

    The frozen base stays registered (so Lightning moves it between devices and applies the
    precision plugin) but its weights are left out of checkpoints: they come from the model
    config, and a checkpoint records which base it belongs to.
    """

    def __init__(self, lm: LatentLM) -> None:
        super().__init__()
        self.lm = lm

    @property
    def reasoner(self) -> torch.nn.Module:
        assert self.lm.reasoner is not None
        return self.lm.reasoner

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
