"""A STIR library on disk: `<run>/stir_library/library.safetensors` (keys, payloads and the
per-entry fields) and `library.json` (the base model, the online settings, the mined
questions), refused for another base the way a reasoner is (`lrt.checkpoint`).

Each kept pair gives two entries: a correction (key h_wrong, payload v = h_right - h_wrong)
and an anchor (key h_right, no payload: the "do nothing" option). Keys are stored L2-normalised
(retrieval is by cosine); payloads are raw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lrt.baselines.stir.mining import Pair
from lrt.checkpoint import check_base_model
from lrt.errors import CheckpointError, one_line

FOLDER = "stir_library"
TENSORS = "library.safetensors"
META = "library.json"
FIELDS = ("keys", "payloads", "anchor", "layer", "control_point", "quality")


@dataclass
class Library:
    """Library entries as aligned rows, and what they were mined for."""

    keys: torch.Tensor
    """[N, d] unit keys."""
    payloads: torch.Tensor
    """[N, d] steering vectors (zero rows for anchors)."""
    anchor: torch.Tensor
    """[N] bool: anchors are the null option, never injected."""
    layer: torch.Tensor
    """[N] decoder layer (0-based) whose output the key was read from and v is added to."""
    control_point: torch.Tensor
    """[N] m: the number of segments before the state."""
    quality: torch.Tensor
    """[N] q = mean reward of positives - mean reward of negatives."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_pairs(cls, pairs: Sequence[Pair], hidden_size: int, meta: dict[str, Any]) -> Library:
        """Two entries per pair, correction first, in the pairs' order."""
        keys, payloads, anchor, layer, cp, quality = [], [], [], [], [], []
        for p in pairs:
            for is_anchor, key in ((False, p.h_wrong), (True, p.h_right)):
                keys.append(torch.nn.functional.normalize(key.float(), dim=0))
                payloads.append(torch.zeros(hidden_size) if is_anchor else p.h_right - p.h_wrong)
                anchor.append(is_anchor)
                layer.append(p.layer)
                cp.append(p.m)
                quality.append(p.quality)
        empty = torch.zeros(0, hidden_size)
        return cls(
            keys=torch.stack(keys) if keys else empty,
            payloads=torch.stack(payloads).float() if payloads else empty.clone(),
            anchor=torch.tensor(anchor, dtype=torch.bool),
            layer=torch.tensor(layer, dtype=torch.long),
            control_point=torch.tensor(cp, dtype=torch.long),
            quality=torch.tensor(quality, dtype=torch.float32),
            meta=meta,
        )

    def to(self, device: torch.device) -> Library:
        parts = {name: getattr(self, name).to(device) for name in FIELDS}
        return Library(**parts, meta=self.meta)

    def subset(self, rows: Sequence[int]) -> Library:
        index = torch.tensor(list(rows), dtype=torch.long)
        parts = {name: getattr(self, name)[index] for name in FIELDS}
        return Library(**parts, meta=self.meta)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in FIELDS}
        save_file(tensors, str(folder / TENSORS))
        (folder / META).write_text(json.dumps(self.meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, base_model: str, hidden_size: int) -> Library:
        """A saved library, checked: both files present and readable, every field there with
        aligned rows of the base's width, and mined on this base."""
        folder = Path(folder)
        if (folder / FOLDER).is_dir():  # a stage=stir run folder
            folder = folder / FOLDER
        meta_path, tensor_path = folder / META, folder / TENSORS
        for path in (meta_path, tensor_path):
            if not path.is_file():
                raise CheckpointError(f"{path} does not exist: {folder} is not a STIR library")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{meta_path} is not readable JSON: {one_line(err)}") from err
        trained_for = meta.get("base_model") if isinstance(meta, dict) else None
        if not isinstance(trained_for, str):
            raise CheckpointError(f"{meta_path} names no base_model: not a STIR library")
        check_base_model(trained_for, base_model, f"STIR library {folder}")
        try:
            tensors = load_file(str(tensor_path))
        except Exception as err:  # safetensors raises several types for a damaged file
            raise CheckpointError(
                f"{tensor_path} is not a readable safetensors file: {one_line(err)}"
            ) from err
        missing = [name for name in FIELDS if name not in tensors]
        if missing:
            raise CheckpointError(f"{tensor_path} has no {missing[0]!r} tensor")
        n = len(tensors["keys"])
        bad = [name for name in FIELDS if len(tensors[name]) != n]
        width = [name for name in ("keys", "payloads") if tensors[name].shape[1:] != (hidden_size,)]
        if bad or width:
            what = (
                f"{bad[0]!r} has {len(tensors[bad[0]])} rows, not {n}"
                if bad
                else (f"{width[0]!r} rows are not {hidden_size} wide (the base's hidden size)")
            )
            raise CheckpointError(f"{tensor_path}: {what}")
        if not all(bool(torch.isfinite(tensors[name]).all()) for name in ("keys", "payloads")):
            raise CheckpointError(f"{tensor_path} holds non-finite keys or payloads")
        return cls(**{name: tensors[name] for name in FIELDS}, meta=meta)
