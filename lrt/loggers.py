"""Lightning loggers from the `logger` config group; wandb goes offline when there is no key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger


def wandb_should_be_offline() -> bool:
    """No API key and no explicit mode: log locally instead of failing on the network."""
    return not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "online"


def build_loggers(cfg: Mapping[str, Any] | None, run_dir: str) -> list[Logger]:
    loggers: list[Logger] = []
    for name, node in (cfg or {}).items():
        kwargs: dict[str, Any] = {"save_dir": run_dir}
        if name == "wandb" and wandb_should_be_offline():
            kwargs["offline"] = True
        loggers.append(instantiate(node, **kwargs))
    return loggers
