"""LoRA adapters of the token-space baseline (`stage=grpo_cot`): where they are, whose they are.

The baseline trains the base model itself (through PEFT LoRA adapters) instead of a reasoner,
so evaluation needs a second kind of checkpoint. An adapter folder is what peft's
`save_pretrained` writes (`adapter_config.json` + `adapter_model.safetensors`) plus
`lrt_adapter.json`, which records the base model's `model.name` so an adapter is never merged
into another base (the LoRA shapes could even match, e.g. two sizes of quantisation).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from lrt.backbone import Backbone, freeze
from lrt.checkpoint import check_base_model
from lrt.errors import CheckpointError, one_line

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
"""peft's marker of an adapter folder."""
META_NAME = "lrt_adapter.json"
"""lrt's metadata beside it: the base model name and the training settings."""


def write_meta(folder: Path, base_model: str, **extra: Any) -> Path:
    """Record which base `folder`'s adapter belongs to (and anything else worth keeping)."""
    path = Path(folder) / META_NAME
    path.write_text(json.dumps({"base_model": base_model, **extra}, indent=2) + "\n")
    return path


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def check_base(folder: Path, base_model: str) -> None:
    """Refuse an adapter trained for another base; one without lrt metadata only gets a warning
    (it was trained outside lrt, and peft still refuses mismatched shapes when it loads)."""
    meta_path = Path(folder) / META_NAME
    if not meta_path.is_file():
        log.warning("%s has no %s: its base model cannot be checked", folder, META_NAME)
        return
    try:
        trained_for = json.loads(meta_path.read_text())["base_model"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{meta_path} is not valid adapter metadata: {one_line(err)}"
        ) from err
    check_base_model(trained_for, base_model, f"{folder}: adapter")


def find_adapter(path: str | Path) -> Path:
    """The adapter folder `path` names: an adapter folder itself (`<run>/adapter/final`, a TRL
    `checkpoint-N`) or a grpo_cot run folder (its `adapter/final`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"adapter {path} does not exist")
    if is_adapter(path):
        return path
    final = path / "adapter" / "final"
    if is_adapter(final):
        return final
    raise CheckpointError(
        f"adapter {path} is not a PEFT adapter folder (no {ADAPTER_CONFIG}) nor a grpo_cot run "
        "folder holding adapter/final"
    )


def adapter_label(folder: Path) -> str:
    """`adapter:<run>/final` for `<run>/adapter/final`, `adapter:<run>/checkpoint-N` for a TRL
    checkpoint in `<run>/checkpoints`, else `adapter:<folder name>`."""
    if folder.parent.name in ("adapter", "checkpoints"):
        return f"adapter:{folder.parents[1].name}/{folder.name}"
    return f"adapter:{folder.name}"


def merged_backbone(folder: Path, backbone: Backbone) -> Backbone:
    """A copy of `backbone` whose model has the adapter in `folder` merged into its weights.

    Merged rather than wrapped, so decoding runs at the base's speed and `LatentLM` sees a
    plain causal LM; the original backbone is left untouched for the other rows of the table.
    """
    from peft import PeftModel

    check_base(folder, backbone.name)
    model = copy.deepcopy(backbone.model)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder))
    except Exception as err:  # peft raises several types for a foreign or damaged adapter
        raise CheckpointError(f"adapter {folder} cannot be loaded: {one_line(err)}") from err
    merged = freeze(peft_model.merge_and_unload())
    return replace(backbone, model=merged)
