"""`arch: prompt`, the question-blind control: K trainable vectors that never see the question.

Prompt tuning (Lester et al. 2021) at the reasoner's place: the same K, the same output norm
and scale, the same stages and evaluation, but no input. Whatever a trained reasoner gains
over this control is what its latents carry about the question (DESIGN.md section 5).
"""

from __future__ import annotations

import torch
from torch import nn

from lrt.reasoner.base import Reasoner, ReasonerConfig, RMSNorm


class PromptReasoner(Reasoner):
    """K learned latent vectors, the same for every question (`arch: prompt`)."""

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__(config)
        d = config.base_hidden_size
        self.latents = nn.Parameter(torch.randn(config.num_latents, d))
        self.out_norm = RMSNorm(d, init_gain=config.embed_rms)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.out_norm(self.latents)
        return z.unsqueeze(0).expand(hidden.shape[0], -1, -1)
