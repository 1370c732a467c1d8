"""Log-probabilities of chosen tokens without the full `[B, m, V]` log-softmax.

Scoring an answer needs, per position, one number: `logit[token] - logsumexp(logits)`. With
answers of 2048 tokens and a 152k-token vocabulary, a float32 log-softmax over `[B, m, V]`
takes gigabytes and autograd keeps it for the backward pass. Here the LM head runs on chunks
of positions, each chunk's logits live only while its two numbers are taken, and under
autograd each chunk is recomputed in the backward pass instead of being kept: the memory
of the head is one chunk's logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHUNK = 256
"""Positions per chunk of the LM head: large enough to keep the matmul efficient."""


def _chunk_logprobs(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return chosen - logits.logsumexp(-1)


def token_logprobs(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[targets], [B, m], one chunk of positions at a
    time; equal to the full log-softmax's values, gradients included."""
    parts = []
    for start in range(0, hidden.shape[1], chunk):
        h, t = hidden[:, start : start + chunk], targets[:, start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(parts, dim=1)
