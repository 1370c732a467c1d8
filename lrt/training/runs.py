"""What every Lightning training run shares, whichever stage it trains: where it resumes from,
the Trainer's arguments, and how a stop by signal is reported.

Kept below `lrt.train` so that a stage living in `lrt.baselines` (RiM) can run its own
Lightning loop with the same resume and stop behaviour without importing the stage registry.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

from lrt.checkpoint import check_base_model, read_checkpoint

if TYPE_CHECKING:
    from lrt.config import TrainConfig


class Stopped(Exception):
    """Training stopped by SIGTERM or Ctrl+C after writing its checkpoint."""

    def __init__(self, signum: signal.Signals, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir` (see `lrt.train.resume_argv`)."""
    return f"python train.py resume={run_dir}"


def resume_path(config: TrainConfig, ckpt_dir: Path) -> str | None:
    """`ckpt_path`, else the run folder's `last.ckpt`, checked before the model loads: readable,
    and for this base (the rest is checked as Lightning loads it)."""
    last = ckpt_dir / "last.ckpt"
    path = config.ckpt_path or (str(last) if last.exists() else None)
    if path:
        trained_for = read_checkpoint(path)["lrt"]["base_model"]
        check_base_model(trained_for, config.model.name, f"{path}: checkpoint")
    return path


def trainer_arguments(config: TrainConfig) -> dict:
    """Trainer kwargs from `conf/trainer`, with `strategy: fsdp` as FSDP2 (see strategies.py)."""
    # The DataModule's batch sampler splits every global batch across ranks itself.
    kwargs = {**config.trainer, "use_distributed_sampler": False}
    # A run shorter than the logging interval logs at its end (EndWithLogAndValidation); the
    # interval is capped at the run's length, which Lightning would otherwise warn about.
    batches = max(1, config.stage.max_steps // config.stage.steps_per_batch)
    kwargs["log_every_n_steps"] = min(kwargs.get("log_every_n_steps", 50), batches)
    if kwargs.get("strategy") == "fsdp":
        from lrt.training.strategies import ShardedDataParallel

        kwargs["strategy"] = ShardedDataParallel()
    return kwargs
