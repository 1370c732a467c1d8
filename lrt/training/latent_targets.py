"""Objectives on the latents themselves (`stage.latent_loss`), beside the answer's likelihood.

`colar` (CoLaR, Tan et al. 2025, "Think Silently, Think Fast"): the written solution is cut
into K consecutive chunks, and latent i regresses the mean input embedding of chunk i. The
solution's content is thus put into Z in a form the frozen base already reads (its own token
embeddings), while the base is trained to answer after the span with the bare answer.
"""

from __future__ import annotations

import torch


def chunk_means(embeds: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of each of `k` consecutive, as-equal-as-possible chunks of `embeds` [n, d]:
    ([k, d] means, [k] bool: the chunk holds a token). With n < k the last k - n chunks are
    empty: those latents get no target."""
    d = embeds.shape[-1]
    means = embeds.new_zeros((k, d))
    has = torch.zeros(k, dtype=torch.bool, device=embeds.device)
    for i, chunk in enumerate(torch.tensor_split(embeds, k)):
        if chunk.shape[0]:
            means[i] = chunk.mean(0)
            has[i] = True
    return means, has


def colar_loss(
    latents: torch.Tensor, targets: torch.Tensor, has: torch.Tensor, scale: float
) -> torch.Tensor:
    """Per row [B]: the mean squared error of the latents [B, K, d] against their chunk
    targets, over the latents that have one, in units of `scale` squared (the embedding RMS,
    so the loss does not depend on the base's embedding scale); 0 for a row with none."""
    err = (latents.float() - targets.float()).pow(2).mean(-1) / scale**2
    weight = has.to(err.dtype)
    return (err * weight).sum(-1) / weight.sum(-1).clamp(min=1)
