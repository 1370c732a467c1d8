"""Log-probabilities of chosen tokens without the full `[B, m, V]` log-softmax.

Scoring an answer needs, per position, one number: `logit[token] - logsumexp(logits)`. With
answers of 2048 tokens and a 152k-token vocabulary, a float32 log-softmax over `[B, m, V]`
takes gigabytes and autograd keeps it for the backward pass. Here the LM head runs on chunks
of tokens (rows x positions, flattened: a GRPO batch of B*G answers has as many rows as a
chunk would have positions), each chunk's logits live only while its two numbers are taken,
and under autograd each chunk is recomputed in the backward pass instead of being kept: the
memory of the head is one chunk's logits, whatever the number of rows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHUNK = 2048
"""Tokens (rows x positions) per chunk of the LM head: large enough to keep the matmul
efficient, small enough that a chunk's float32 logits over a 152k vocabulary stay near 1 GB."""


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
    """log softmax(head(hidden) / temperature)[targets], [B, m], `chunk` tokens of the flattened
    rows x positions at a time; equal to the full log-softmax's values, gradients included."""
    b, m = targets.shape
    flat_hidden, flat_targets = hidden.reshape(b * m, -1), targets.reshape(b * m)
    parts = []
    for start in range(0, b * m, chunk):
        h, t = flat_hidden[start : start + chunk], flat_targets[start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(parts).view(b, m) if parts else hidden.new_zeros(b, m, dtype=torch.float)
