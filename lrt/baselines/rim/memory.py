"""The memory blocks' input embeddings: RiM's special tokens, kept outside the vocabulary.

RiM adds `<b>`, `<m>` and `</b>` to the vocabulary; here they are three learned vectors fed as
input embeddings, so the base's embedding table, its LM head and its files never change and a
block can never be decoded as text. Every block is `<b>`, M times `<m>`, `</b>`: blocks are
the same fixed sequence, told apart by their positions and what they attend to.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lrt.backbone import Backbone
from lrt.errors import CheckpointError, one_line

FILE = "memory.safetensors"


class MemoryBlocks(nn.Module):
    """Three learned embeddings (opening, memory, closing) and the block they make."""

    def __init__(self, embeddings: torch.Tensor, memory_tokens: int) -> None:
        super().__init__()
        if embeddings.ndim != 2 or embeddings.shape[0] != 3:
            raise CheckpointError(
                f"memory embeddings have shape {tuple(embeddings.shape)}, not (3, hidden size)"
            )
        self.embeddings = nn.Parameter(embeddings.detach().float().clone())
        self.memory_tokens = memory_tokens

    @classmethod
    def from_markers(
        cls, backbone: Backbone, markers: list[str], memory_tokens: int
    ) -> MemoryBlocks:
        """Each embedding starts at the mean input embedding of its marker text's tokens, a
        point the base has seen inputs near (a random vector could be far off its scale)."""
        rows = []
        for text in markers:
            ids = backbone.tokenizer(text, add_special_tokens=False).input_ids
            rows.append(backbone.embed(torch.tensor(ids, device=backbone.device)).float().mean(0))
        return cls(torch.stack(rows), memory_tokens)

    @property
    def block_size(self) -> int:
        return self.memory_tokens + 2

    def forward(self, num_blocks: int, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """Input embeddings of `num_blocks` blocks, [batch_size, num_blocks * (M + 2), d]."""
        e = self.embeddings.to(dtype)
        block = torch.cat([e[:1], e[1:2].expand(self.memory_tokens, -1), e[2:]])
        return block.repeat(num_blocks, 1).unsqueeze(0).expand(batch_size, -1, -1)

    def save(self, folder: Path) -> None:
        save_file({"embeddings": self.embeddings.detach().cpu().contiguous()}, Path(folder) / FILE)

    @classmethod
    def load(cls, folder: Path, memory_tokens: int, hidden_size: int) -> MemoryBlocks:
        path = Path(folder) / FILE
        if not path.is_file():
            raise CheckpointError(f"{folder} is not a RiM adapter: it has no {FILE}")
        try:
            embeddings = load_file(str(path))["embeddings"]
        except Exception as err:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{path} cannot be read: {one_line(err)}") from err
        if embeddings.shape[-1] != hidden_size:
            raise CheckpointError(
                f"{path} holds embeddings of width {embeddings.shape[-1]}, but the base's "
                f"hidden size is {hidden_size}"
            )
        return cls(embeddings, memory_tokens)
