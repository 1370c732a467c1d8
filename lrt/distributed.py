"""The collective operations a data-parallel run needs beyond Lightning's gradient sync.

Under FSDP the reasoner's parameters are sharded `DTensor`s: reading its full weights is a
collective every rank must join, in the same order. Everything here is therefore called on
every rank, and only the writing of files is left to rank 0.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

T = TypeVar("T")


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with every sharded tensor gathered in full, on CPU (collective
    under FSDP: call it on every rank)."""
    out = {}
    for name, value in module.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[name] = value.detach().cpu()
    return out


def checksum(state: dict[str, torch.Tensor]) -> str:
    """A digest of the exact bytes of every tensor, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(value: T) -> list[T]:
    """`value` from every rank, in rank order (just `[value]` in one process)."""
    rank, size = world()
    if size == 1:
        return [value]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, value)
    return out
