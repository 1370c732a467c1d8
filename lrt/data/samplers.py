"""Which examples each step takes: a pure function of (seed, step), split across ranks.

Exact resume needs no sampler state, and data parallelism needs every rank to take its own
slice of the *global* batch (DESIGN.md section 6), padded so that all ranks run equal work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from lrt.errors import ConfigError, DataError


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank `rank`'s contiguous share of `items`; the first `len % world_size` ranks take one
    more, so the shares are disjoint and together are `items` in order."""
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Training batches as a pure function of (seed, step): exact resume needs no sampler state.

    Global batch `s` is slice `s` of an endless stream made of one seeded permutation per pass
    over the data, so a run restarted at step `start` draws exactly the batches an uninterrupted
    run would have drawn from there on. `batch_size` is the global batch (DESIGN.md section 6):
    under data parallelism rank r yields its own contiguous slice of every global batch, so the
    ranks together see each question of it exactly once, on any number of devices; when the
    batch does not divide evenly, the shorter slices are padded (slot -1) to the same length.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n <= 0:
            raise DataError("the training split is empty after filtering")
        if batch_size < world_size:
            raise ConfigError(
                f"stage.batch_size={batch_size} is the global batch and must be at least the "
                f"number of data-parallel processes ({world_size})"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size

    def batch(self, step: int) -> list[int]:
        """The global batch of `step`: dataset indices, in slot order."""
        out: list[int] = []
        position = step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(position, self.n)
            perm = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
            take = min(self.batch_size - len(out), self.n - offset)
            out += perm[offset : offset + take].tolist()
            position += take
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        width = -(-self.batch_size // self.world_size)
        for step in range(self.start, self.stop):
            keyed = list(enumerate(self.batch(step)))
            mine = [(i, slot) for slot, i in shard(keyed, self.rank, self.world_size)]
            # Equal lengths on every rank (FSDP's forwards are collectives): a rank with one
            # question fewer repeats its last one as padding, slot -1, which carries no loss.
            yield mine + [(mine[-1][0], -1)] * (width - len(mine))

    def __len__(self) -> int:
        """The whole run's batch count, not what is left: Lightning counts the run as one epoch
        and, on resume, restores how many of its batches are done; a shorter length would end
        that epoch early and replay this sampler from `start`."""
        return self.stop


class ShardedEvalSampler(Sampler[list[tuple[int, int]]]):
    """Batches of rank r's contiguous shard of an evaluation split, padded to equal length.

    Every rank gets the same number of batches of the same sizes (padding examples repeat the
    shard's last record with slot -1 and are not counted), because under FSDP every forward
    pass is a collective that all ranks must make together.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        keys = shard(list(range(n)), rank, world_size)
        width = -(-n // world_size)
        pad = [(keys[-1] if keys else 0, -1)] * (width - len(keys))
        items = [(i, i) for i in keys] + [(i, -1) for i, _ in pad]
        self.batches = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepDataLoader(DataLoader):
    """A DataLoader over a `StepBatchSampler`, which resumes from the restored step with no state
    of its own; saying so (empty state) stops Lightning warning that it cannot resume."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the sampler is rebuilt from `batches_done()`."""
