"""A few of GRPO's sampled answers per logged step, for reading what the policy does."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from lrt.training.rollout import Rollout

SAMPLE_ROWS = 8


def log_samples(module: L.LightningModule, rollout: Rollout, step: int) -> None:
    """(question, answer, reward) rows of `rollout`: a wandb Table, else `<run>/samples.jsonl`."""
    if not module.trainer.is_global_zero:
        return
    columns = ["step", "question", "answer", "gold", "reward"]
    rows = [
        [step, record.question, text, record.answer, float(reward)]
        for record, text, reward in zip(
            rollout.records[:SAMPLE_ROWS],
            rollout.generation.texts,
            rollout.rewards.tolist(),
            strict=False,
        )
    ]
    wandb = [lg for lg in module.loggers if isinstance(lg, WandbLogger)]
    for logger in wandb:
        logger.log_table(key="train/samples", columns=columns, data=rows, step=step)
    if not wandb:
        path = Path(module.trainer.default_root_dir) / "samples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for row in rows:
                f.write(json.dumps(dict(zip(columns, row, strict=True))) + "\n")
