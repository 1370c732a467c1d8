"""AdamW over the reasoner's parameters with linear warm-up and cosine decay (per step)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lrt.errors import ConfigError


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    """AdamW's denominator term. Updates are `lr * m / (sqrt(v) + eps)`: a gradient far below
    eps moves a parameter by far less than lr, one far above it by about lr."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"stage.optim.lr={self.lr} must be positive")
        if self.eps <= 0:
            raise ConfigError(f"stage.optim.eps={self.eps} must be positive")
        if self.warmup_steps < 0:
            raise ConfigError(f"stage.optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"stage.optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def configure(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig, total_steps: int
) -> dict[str, Any]:
    """What a LightningModule's `configure_optimizers` returns."""
    optimizer = torch.optim.AdamW(
        [p for p in params if p.requires_grad],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
