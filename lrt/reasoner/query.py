"""`arch: query`, our default G_phi: K learned queries cross-attending to the base's states.

A small, randomly initialised transformer (DESIGN.md section 1, step 2): each block lets the
queries attend to each other, then to the question's hidden states (respecting its padding),
then applies an MLP; `f_in: d -> d_r` and `f_out: d_r -> d` frame it.
"""

from __future__ import annotations

import torch
from torch import nn

from lrt.reasoner.base import Reasoner, ReasonerConfig, RMSNorm


class ReasonerBlock(nn.Module):
    """Pre-norm block: self-attention among queries, cross-attention to H, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )

    def forward(self, q: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.self_norm(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.cross_norm(q)
        q = q + self.cross_attn(h, memory, memory, key_padding_mask=pad, need_weights=False)[0]
        return q + self.mlp(self.mlp_norm(q))


class QueryReasoner(Reasoner):
    """K learned queries cross-attending to the base's hidden states (`arch: query`)."""

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__(config)
        d, w = config.base_hidden_size, config.width
        # Last-layer states of LLMs carry a few huge outlier dimensions; normalise before f_in.
        self.in_norm = RMSNorm(d)
        self.f_in = nn.Linear(d, w)
        self.queries = nn.Parameter(torch.randn(config.num_latents, w) * 0.02)
        self.blocks = nn.ModuleList(
            ReasonerBlock(w, config.heads, config.mlp_ratio, config.dropout)
            for _ in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(w)
        self.f_out = nn.Linear(w, d)
        nn.init.normal_(self.f_out.weight, std=0.02)
        nn.init.zeros_(self.f_out.bias)
        self.out_norm = RMSNorm(d, init_gain=config.embed_rms)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        memory = self.f_in(self.in_norm(hidden.to(self.f_in.weight.dtype)))
        q = self.queries.unsqueeze(0).expand(hidden.shape[0], -1, -1)
        pad = ~mask.bool()
        for block in self.blocks:
            q = block(q, memory, pad)
        return self.out_norm(self.f_out(self.final_norm(q)))
