"""Building the pieces a run needs from its composed config (shared by train.py and evaluate.py)."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lrt.backbone import Backbone, backbone_config, load_backbone
from lrt.errors import CheckpointError
from lrt.reasoner import Reasoner, ReasonerConfig, build_reasoner, reasoner_for


def backbone_from(cfg: DictConfig) -> Backbone:
    return load_backbone(backbone_config(cfg.model))


def new_reasoner(cfg: DictConfig, backbone: Backbone) -> Reasoner:
    return build_reasoner(
        dict(cfg.reasoner),
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
        base=backbone.model,
        base_config=asdict(backbone.config),
    )


def load_reasoner(source: str | Path, backbone: Backbone) -> Reasoner:
    """A reasoner from an exported folder or from a Lightning checkpoint of a stage module."""
    source = Path(source)
    if source.is_dir():
        return Reasoner.from_pretrained(source, backbone.name, backbone.hidden_size)
    return reasoner_from_checkpoint(source, backbone)


def one_line(err: BaseException) -> str:
    """The telling part of an exception's message: torch's run to paragraphs."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[0].split(". ", 1)[0]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint written by lrt, loaded tensors-only (`weights_only=True`).

    Memory-mapped, so checking a checkpoint before the base model loads costs little.
    """
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a readable Lightning checkpoint: not the zip archive torch.save "
            "writes (truncated, or another format)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        refused = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        what = (
            refused[0].split(". ", 1)[0].removeprefix("WeightsUnpickler error: ") if refused else ""
        )
        raise CheckpointError(
            f"{path} holds objects other than tensors, which loading with weights_only=True "
            f"refuses ({what or one_line(err)})"
        ) from err
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(
            f"{path} is not a readable Lightning checkpoint: {one_line(err)}"
        ) from err
    if not isinstance(ckpt, dict) or "lrt" not in ckpt:
        raise CheckpointError(f"{path} has no 'lrt' metadata: not a checkpoint written by lrt")
    return ckpt


def reasoner_from_checkpoint(path: Path, backbone: Backbone) -> Reasoner:
    ckpt = read_checkpoint(path)
    meta = ckpt["lrt"]
    if meta["base_model"] != backbone.name:
        raise CheckpointError(
            f"{path} was trained for base model {meta['base_model']!r}, not {backbone.name!r}"
        )
    reasoner = reasoner_for(ReasonerConfig.from_dict(meta["reasoner_config"], where=str(path)))
    prefix = "lm.reasoner."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        reasoner.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the reasoner weights do not match its config: {one_line(err)}"
        ) from err
    return reasoner
