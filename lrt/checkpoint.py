"""Reading what lrt writes (Lightning checkpoints) and the one check that a saved model belongs
to the base it is loaded onto."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from lrt.errors import CheckpointError, one_line


def check_base_model(trained_for: str, base_model: str, what: str) -> None:
    """Refuse a reasoner, checkpoint or adapter trained for another base model: its weights
    could even have the right shapes (two quantisations of one model), and would be wrong."""
    if trained_for != base_model:
        raise CheckpointError(
            f"{what} was trained for base model {trained_for!r}, not {base_model!r}"
        )


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
