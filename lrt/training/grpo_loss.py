"""The latent-space GRPO objective as pure tensor functions (DESIGN.md section 1, GRPO stage).

The policy is a Gaussian over the K latent vectors, `Z ~ N(mu, sigma^2 I)`; each latent vector
plays the part a completion token plays in TRL's GRPO, so the ratio, clipping and the loss-type
normalisations are per latent token. Kept free of Lightning so the formulas can be checked
against hand-built tensors.
"""

from __future__ import annotations

import math

import torch

from lrt.errors import ConfigError

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
ADVANTAGE_EPS = 1e-4
"""Added to the group std before dividing, as in TRL, so small spreads do not explode."""


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups (consecutive runs of `group_size` rewards) hold all-equal rewards: [B]."""
    grouped = rewards.view(-1, group_size)
    return grouped.max(dim=1).values == grouped.min(dim=1).values


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: bool = True
) -> torch.Tensor:
    """`(r - mean) / (std + eps)` within each group; without the division when not scaling.

    `rewards` is [B * G], the G samples of a question consecutive. Groups whose rewards are all
    equal get exactly zero advantage: rounding in their mean must not turn into a gradient.
    """
    grouped = rewards.view(-1, group_size).float()
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards:
        adv = adv / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_EPS)
    adv = torch.where(zero_std_groups(rewards, group_size).unsqueeze(1), 0.0, adv)
    return adv.reshape(-1)


def gaussian_logprob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, sigma^2 I) per latent token, summed over the d dimensions: [N, K].

    `z` and `mu` are [N, K, d]; `sigma` is a scalar (fixed or learned). Computed in float32
    whatever the reasoner's dtype, since ratios are differences of sums over d terms.
    """
    z, mu, sigma = z.float(), mu.float(), sigma.float()
    d = z.shape[-1]
    quad = ((z - mu) / sigma).pow(2).sum(dim=-1)
    return -0.5 * quad - d * (torch.log(sigma) + 0.5 * math.log(2 * math.pi))


def gaussian_kl(mu: torch.Tensor, mu_ref: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2 I) || N(mu_ref, sigma^2 I)) per latent token: `||mu - mu_ref||^2 / 2s^2`."""
    diff = mu.float() - mu_ref.float()
    return diff.pow(2).sum(dim=-1) / (2 * sigma.float().pow(2))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate to the reference, `exp(ref - logp) - (ref - logp) - 1` (TRL's k3).

    Unbiased for KL(policy || ref) on tokens sampled from the policy, and never negative.
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def check_loss_type(loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"stage.loss_type={loss_type!r} is not one of {LOSS_TYPES}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    mask: torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped-ratio GRPO loss and the fraction of tokens where clipping is active.

    `logp`/`old_logp`/`kl` are [N, T] (`old_logp` detached, from the sampling step),
    `advantages` is [N]. A token is a latent vector (latent exploration), a sampled answer token
    (answer exploration) or either (both). Aggregation follows TRL: `grpo` averages each
    sample's tokens then the samples, `bnpo` averages all tokens of the batch, `dr_grpo`
    divides the sum by N times the most tokens a sample can have (`max_tokens`, TRL's
    `max_completion_length`; default T). With K latents only, every token is present and the
    three coincide; `mask` ([N, T], 1 = counted) is where they differ, for variable-length
    answers.
    """
    check_loss_type(loss_type)
    mask = torch.ones_like(logp) if mask is None else mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1).to(logp.dtype)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if beta != 0.0:
        if kl is None:
            raise ValueError("policy_loss: beta != 0 needs the per-token KL")
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        loss = (per_token * mask).sum() / (per_token.shape[0] * (max_tokens or per_token.shape[1]))
    with torch.no_grad():
        active = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
        clip_frac = (active.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return loss, clip_frac
