"""`arch: prompt`, the question-blind control: K latent vectors that never see the question.

Prompt tuning (Lester et al. 2021) at the reasoner's place, with prefix-tuning's
reparameterisation (Li & Liang 2021): the query reasoner's own network, whose cross-attention
reads one constant state instead of the question. The control thus has the reasoner's size,
initialisation and optimisation, everything but the question, so whatever a trained reasoner
gains over it is what its latents carry about the question (DESIGN.md section 5). (Free
vectors trained directly, the plain form, learned more slowly on arith: docs/latents.md.)
"""

from __future__ import annotations

import torch

from lrt.reasoner.query import QueryReasoner


class PromptReasoner(QueryReasoner):
    """The same K latents for every question (`arch: prompt`)."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, d = hidden.shape[0], self.config.base_hidden_size
        blank = hidden.new_zeros((b, 1, d), dtype=self.f_in.weight.dtype)
        return super().forward(blank, mask.new_ones((b, 1)))
