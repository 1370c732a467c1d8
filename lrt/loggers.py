"""Lightning loggers from the `logger` config group.

wandb logs online when it would find credentials itself (`WANDB_API_KEY`, an identity token
file, the `~/.netrc` entry that `wandb login` writes, or an `api_key` in its settings file) and
offline otherwise, so a run never stops at a login prompt. The lookup reads those places as
files: asking wandb (`wandb.login`) starts its service process, which on a machine without
network was seen never to exit. Each run folder keeps its wandb run id, so a resumed run
continues the same wandb run.
"""

from __future__ import annotations

import configparser
import netrc
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the credential check below must stay importable without Lightning
    from lightning.pytorch.loggers import Logger

WANDB_ID_FILE = "wandb_run_id"


DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def _wandb_settings() -> dict[str, str]:
    """The `[default]` section of wandb's global settings file (`wandb login --host` writes
    `base_url` there), or nothing when there is none or it cannot be read."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or Path("~/.config/wandb").expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(config_dir) / "settings")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _netrc_path() -> Path:
    """The netrc file wandb reads: `NETRC`, else `~/.netrc`, else `~/_netrc`."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def _netrc_has(host: str) -> bool:
    """Whether the netrc file holds a password for `host` (an unreadable file holds none)."""
    try:
        entry = netrc.netrc(str(_netrc_path())).authenticators(host)
    except (netrc.NetrcParseError, OSError, UnicodeDecodeError):
        return False
    return bool(entry and entry[2])


def wandb_has_credentials() -> bool:
    """Whether wandb would find credentials for its server without asking the user, read from
    the same places wandb reads (environment, netrc, settings file), with no network call and
    no wandb process."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    settings = _wandb_settings()
    url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or DEFAULT_WANDB_HOST
    host = urlsplit(url).netloc
    return bool(host and _netrc_has(host)) or bool(settings.get("api_key"))


def wandb_should_be_offline() -> bool:
    """No credentials wandb can find itself, and no explicit `WANDB_MODE`: log locally."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    if mode == "":  # set but empty: wandb's settings refuse it, and it means "not set"
        del os.environ["WANDB_MODE"]
    return not wandb_has_credentials()


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
    from hydra.utils import instantiate

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
