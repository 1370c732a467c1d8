"""Lightning loggers from the `logger` config group.

wandb uses its own credential lookup (`WANDB_API_KEY`, its settings files, `~/.netrc` written
by `wandb login`) and goes offline only when it finds none, so a run never stops at a login
prompt. Each run folder keeps its wandb run id, so a resumed run continues the same wandb run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger

WANDB_ID_FILE = "wandb_run_id"


def wandb_should_be_offline() -> bool:
    """No credentials wandb can find itself, and no explicit `WANDB_MODE`: log locally."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    if mode == "":  # set but empty: wandb's settings refuse it, and it means "not set"
        del os.environ["WANDB_MODE"]
    import wandb

    return not wandb.login(prompt=False, verify=False)


def wandb_run_id(run_dir: str | Path) -> str:
    """The wandb run id of a run folder: made on its first start, read back on a resume."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)  # wandb's own ids: 8 characters of [a-z0-9]
    path.write_text(run_id + "\n")
    return run_id


def build_loggers(cfg: Mapping[str, Any] | None, run_dir: str) -> list[Logger]:
    loggers: list[Logger] = []
    for name, node in (cfg or {}).items():
        kwargs: dict[str, Any] = {"save_dir": run_dir}
        if name == "wandb":
            kwargs["id"] = wandb_run_id(run_dir)
            if wandb_should_be_offline():  # `wandb sync` later joins the runs of one id
                # `mode` too: wandb's settings were read by the credential lookup already, so
                # the WANDB_MODE that Lightning sets for `offline` comes too late for them.
                kwargs |= {"offline": True, "mode": "offline"}
        loggers.append(instantiate(node, **kwargs))
    return loggers
