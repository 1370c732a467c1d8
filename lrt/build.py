"""Building the pieces a run needs from its composed config (shared by train.py and evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from lrt.backbone import Backbone, backbone_config, load_backbone
from lrt.errors import CheckpointError
from lrt.reasoner import Reasoner, ReasonerConfig, build_reasoner


def backbone_from(cfg: DictConfig) -> Backbone:
    return load_backbone(backbone_config(cfg.model))


def new_reasoner(cfg: DictConfig, backbone: Backbone) -> Reasoner:
    return build_reasoner(
        dict(cfg.reasoner), backbone.name, backbone.hidden_size, backbone.embedding_rms()
    )


def load_reasoner(source: str | Path, backbone: Backbone) -> Reasoner:
    """A reasoner from an exported folder or from a Lightning checkpoint of a stage module."""
    source = Path(source)
    if source.is_dir():
        return Reasoner.from_pretrained(source, backbone.name, backbone.hidden_size)
    return reasoner_from_checkpoint(source, backbone)


def reasoner_from_checkpoint(path: Path, backbone: Backbone) -> Reasoner:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable Lightning checkpoint: {err}") from err
    meta = ckpt.get("lrt") if isinstance(ckpt, dict) else None
    if meta is None:
        raise CheckpointError(f"{path} has no 'lrt' metadata: not a checkpoint written by lrt")
    if meta["base_model"] != backbone.name:
        raise CheckpointError(
            f"{path} was trained for base model {meta['base_model']!r}, not {backbone.name!r}"
        )
    reasoner = Reasoner(ReasonerConfig.from_dict(meta["reasoner_config"], where=str(path)))
    prefix = "lm.reasoner."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    reasoner.load_state_dict(state)
    return reasoner
