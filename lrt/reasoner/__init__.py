"""The reasoning network G_phi: one way to build one, one way to load one.

`build_reasoner` makes a fresh reasoner of `reasoner.arch` for a given base; `load_reasoner`
reads a saved one (an exported folder of `config.json` + `model.safetensors`, or a Lightning
checkpoint of a stage) and refuses one trained for another base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from lrt.checkpoint import check_base_model, read_checkpoint
from lrt.errors import CheckpointError, one_line
from lrt.reasoner.base import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Reasoner,
    ReasonerConfig,
    RMSNorm,
    latent_spread,
    read_config,
)
from lrt.reasoner.pretrained import PretrainedReasoner
from lrt.reasoner.prompt import PromptReasoner
from lrt.reasoner.query import QueryReasoner, ReasonerBlock

ARCHITECTURES: dict[str, type[Reasoner]] = {
    "query": QueryReasoner,
    "pretrained": PretrainedReasoner,
    "prompt": PromptReasoner,
}
CHECKPOINT_PREFIX = "lm.reasoner."
"""Where a stage module's state dict keeps the reasoner's weights."""

__all__ = [
    "ARCHITECTURES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "PretrainedReasoner",
    "PromptReasoner",
    "QueryReasoner",
    "Reasoner",
    "ReasonerBlock",
    "ReasonerConfig",
    "RMSNorm",
    "build_reasoner",
    "is_reasoner_folder",
    "latent_spread",
    "load_reasoner",
    "read_config",
]


def build_reasoner(
    raw: dict[str, Any] | ReasonerConfig,
    base_model: str,
    hidden_size: int,
    embed_rms: float,
    base: Any = None,
    base_config: dict[str, Any] | None = None,
) -> Reasoner:
    """A fresh reasoner from the `reasoner` config group for a given base.

    `base` (the frozen base model) is what `arch: pretrained` with `init_from: base` copies;
    `base_config` (its `model` config) is recorded with the reasoner.
    """
    settings = raw if isinstance(raw, dict) else ReasonerConfig.to_dict(raw)
    config = ReasonerConfig.from_dict(
        {
            **settings,
            "base_model": base_model,
            "base_hidden_size": hidden_size,
            "embed_rms": embed_rms,
            "base_config": base_config,
        }
    )
    return ARCHITECTURES[config.arch].create(config, base)


def is_reasoner_folder(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def load_reasoner(
    source: str | Path, base_model: str | None = None, hidden_size: int | None = None
) -> Reasoner:
    """A saved reasoner of either architecture, from an exported folder or from a Lightning
    checkpoint of a stage module; refused when trained for another `base_model`."""
    source = Path(source)
    if not source.is_file():  # an exported folder (read_config names a missing one)
        config, where = read_config(source), f"reasoner {source}"
        weights = source / WEIGHTS_NAME
        mismatch = f"{weights} does not match {source / CONFIG_NAME}"
    else:
        ckpt = read_checkpoint(source)
        config = ReasonerConfig.from_dict(ckpt["lrt"]["reasoner_config"], where=str(source))
        where, mismatch = f"{source}", f"{source}: the reasoner weights do not match its config"
    if base_model is not None:
        trained_for = ckpt["lrt"].get("base_model", "") if source.is_file() else config.base_model
        check_base_model(trained_for or config.base_model, base_model, where)
    if hidden_size is not None and config.base_hidden_size != hidden_size:
        raise CheckpointError(
            f"{where} was trained for a base of hidden size {config.base_hidden_size}, "
            f"not {hidden_size}"
        )
    if not source.is_file():
        try:
            state = load_file(weights)
        except Exception as err:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from err
    else:
        state = {
            k[len(CHECKPOINT_PREFIX) :]: v
            for k, v in ckpt["state_dict"].items()
            if k.startswith(CHECKPOINT_PREFIX)
        }
    model = ARCHITECTURES[config.arch].create(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{mismatch}: {one_line(err)}") from err
    return model
