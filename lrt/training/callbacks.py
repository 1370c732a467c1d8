"""Callbacks: export the reasoner alone (safetensors) for evaluation and sharing."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lrt.training.base import StageModule


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
