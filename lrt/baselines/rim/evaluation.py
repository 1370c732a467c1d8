"""`evaluate.py modes=[rim] rim=<run folder or adapter>`: RiM adapters as checkpoints.

Each adapter is merged into a copy of the base (so decoding runs at the base's speed, and the
other rows keep the bare base) and given its block embeddings; its `rim` rows then get the
same intervals, paired comparisons and Pareto points as every other mode.
"""

from __future__ import annotations

from collections.abc import Sequence

from lrt.adapter import adapter_label, find_adapter, merged_backbone
from lrt.baselines.rim.memory import MemoryBlocks
from lrt.baselines.rim.model import RiMLM, read_meta
from lrt.evaluation.discovery import Checkpoint
from lrt.lm.latent_lm import LatentLM


def load_rim(sources: Sequence[str], base: LatentLM) -> list[Checkpoint]:
    """One checkpoint per source, each checked against the base before anything decodes."""
    found = []
    for source in sources:
        folder = find_adapter(source)
        meta = read_meta(folder, base.backbone.name)
        backbone = merged_backbone(folder, base.backbone)
        memory = MemoryBlocks.load(folder, meta["memory_tokens"], backbone.hidden_size)
        lm = RiMLM(backbone, memory.to(backbone.device), meta["num_blocks"])
        label = "rim:" + adapter_label(folder).removeprefix("adapter:")
        found.append(Checkpoint(label, folder, lm))
    return found
