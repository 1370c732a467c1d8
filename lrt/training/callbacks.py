"""Callbacks: export the reasoner alone (safetensors) for evaluation and sharing."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from lrt.training.base import StageModule

log = logging.getLogger(__name__)


class ReasonerExport(L.Callback):
    """Writes `<run>/reasoner/best` whenever `monitor` improves and `<run>/reasoner/final`."""

    def __init__(self, directory: str | Path, monitor: str = "val/accuracy") -> None:
        self.directory = Path(directory)
        self.monitor = monitor
        self.best: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not trainer.is_global_zero:
            return
        if self.best is None or float(value) > self.best:
            self.best = float(value)
            pl_module.reasoner.save_pretrained(self.directory / "best")

    def on_train_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        if trainer.is_global_zero:
            pl_module.reasoner.save_pretrained(self.directory / "final")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


class RankConsistencyCheck(L.Callback):
    """At the end of data-parallel training, check every rank holds the same reasoner.

    DDP keeps replicas equal only if every rank steps identically; a rank-dependent code path
    (a skipped batch, a different clip) silently splits them. Comparing a fingerprint of the
    weights across ranks catches that before a diverged replica is exported.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        if trainer.world_size < 2:
            return
        flat = torch.cat([p.detach().float().flatten() for p in pl_module.reasoner.parameters()])
        gathered = pl_module.all_gather(flat)
        spread = (gathered - gathered[0]).abs().max().item()
        if spread > 0:
            raise RuntimeError(f"reasoner weights differ across ranks by up to {spread:.3g}")
        log.info("reasoner weights identical on %d ranks", trainer.world_size)
