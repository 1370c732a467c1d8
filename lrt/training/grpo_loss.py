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

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
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


def gaussian_kl(
    mu: torch.Tensor, sigma: torch.Tensor, mu_ref: torch.Tensor, sigma_ref: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, sigma^2 I) || N(mu_ref, sigma_ref^2 I)) per latent token, summed over d.

    `d * (log(sigma_ref / sigma) + sigma^2 / (2 sigma_ref^2) - 1/2) + ||mu - mu_ref||^2 /
    (2 sigma_ref^2)`: the mean term is scaled by the *reference* policy's variance, so a
    learned sigma cannot lower the penalty by growing; with sigma = sigma_ref it is the
    equal-variance closed form `||mu - mu_ref||^2 / (2 sigma^2)`.
    """
    mu, mu_ref = mu.float(), mu_ref.float()
    sigma, sigma_ref = sigma.float(), sigma_ref.float()
    d = mu.shape[-1]
    var_ratio = (sigma / sigma_ref).pow(2)
    spread = 0.5 * d * (var_ratio - 1 - torch.log(var_ratio))
    return spread + (mu - mu_ref).pow(2).sum(dim=-1) / (2 * sigma_ref.pow(2))


def log_sigma_bounds(scale: float, min_scale: float, max_scale: float) -> tuple[float, float]:
    """log(min_scale / scale) and log(max_scale / scale), the range of a learned log(sigma /
    sigma_init), rounded inwards to float32 so the clamped float32 parameter never leaves it."""
    lo, hi = math.log(min_scale / scale), math.log(max_scale / scale)
    lo32, hi32 = torch.tensor(lo), torch.tensor(hi)
    if float(lo32) < lo:
        lo32 = lo32.nextafter(torch.tensor(math.inf))
    if float(hi32) > hi:
        hi32 = hi32.nextafter(torch.tensor(-math.inf))
    return float(lo32), float(hi32)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate to the reference, `exp(ref - logp) - (ref - logp) - 1` (TRL's k3).

    Unbiased for KL(policy || ref) on tokens sampled from the policy, and never negative.
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def check_loss_type(loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"stage.loss_type={loss_type!r} is not one of {LOSS_TYPES}")


def loss_units(
    loss_type: str,
    mask: torch.Tensor,
    max_tokens: int | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """What a loss type divides by, for one micro-batch; summed over micro-batches and ranks it
    normalises the global loss as TRL's `_compute_loss` (with its gradient accumulation and
    data-parallel average) does: samples (`grpo`), micro-batches (`bnpo`, whose sum is already
    its micro-batch's token mean), tokens (`dapo`: the global batch's) or samples times the most
    tokens a sample can have (`dr_grpo`). `mask` is [N, T]; `rows` ([N] bool, default: those
    with a counted token) the samples that exist, counted even when masked out (TRL's
    `mask_truncated_completions` masks tokens, not samples)."""
    check_loss_type(loss_type)
    samples = (mask.sum(-1) > 0 if rows is None else rows).sum().float()
    if loss_type == "grpo":
        return samples
    if loss_type == "bnpo":
        return (samples > 0).float()
    if loss_type == "dapo":
        return mask.sum().float()
    return samples * (max_tokens or mask.shape[1])


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
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped-ratio GRPO loss and the fraction of tokens where clipping is active.

    `logp`/`old_logp`/`kl` are [N, T] (`old_logp` detached, from the sampling step),
    `advantages` is [N]. A token is a latent vector (latent exploration), a sampled answer token
    (answer exploration) or either (both). Aggregation follows TRL: `grpo` averages each
    sample's tokens then the samples, `bnpo` and `dapo` average all tokens of the batch (they
    differ across micro-batches: `bnpo` averages each micro-batch's own, `dapo` divides by the
    global count), `dr_grpo` divides the sum by N times the most tokens a sample can have
    (`max_tokens`, TRL's `max_completion_length`; default T). With K latents only, every token
    is present and all coincide; `mask` ([N, T], 1 = counted) is where they differ, for
    variable-length answers and masked truncated samples (`rows`: see `loss_units`). The loss
    is `policy_loss_sum(...) / loss_units(...)`.
    """
    total, clip_frac = policy_loss_sum(
        logp, old_logp, advantages, loss_type, epsilon_low, epsilon_high, kl, beta, mask
    )
    mask = torch.ones_like(logp) if mask is None else mask
    return total / loss_units(loss_type, mask, max_tokens, rows).clamp(min=1), clip_frac


def policy_loss_sum(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The numerator of `policy_loss`: summed per-sample means (`grpo`), the micro-batch's
    token mean (`bnpo`) or summed per-token terms (`dapo`, `dr_grpo`), so that micro-batches
    and ranks can share one denominator."""
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
        total = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
    elif loss_type == "bnpo":
        total = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        total = (per_token * mask).sum()
    with torch.no_grad():
        active = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
        clip_frac = (active.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return total, clip_frac
