"""GRPO's policies: where a sample's randomness comes from and how it is scored.

A policy draws the randomness of a rollout and, given the current reasoner, returns each
sample's per-token log-probabilities (and its KL to the reference) for the clipped-ratio loss:

- `LatentGaussianPolicy`: `Z ~ N(mu, sigma^2 I)`, one token per latent vector; the density is
  a closed form of Z and mu, so scoring needs no pass through the base.
- `AnswerTokenPolicy`: answers sampled from the frozen base given Z (the paper's Algorithm 1);
  each answer token is a token, scored by a pass through the base whose gradient reaches Z.

`exploration=both` uses the two side by side: a sample's tokens are its K latents followed by
its answer tokens, each term a score-function estimate through its own randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lrt.lm import sampling
from lrt.lm.latent_lm import LatentLM
from lrt.lm.prefix import Prefix
from lrt.lm.sampling import RowNoise
from lrt.training.grpo_loss import gaussian_kl, gaussian_logprob, k3_kl

LATENT_STREAM, ANSWER_STREAM, VAL_STREAM = 1, 2, 3
"""Key-path tags that keep the latent noise, the answer-token uniforms and validation's
sampled answers independent."""


@dataclass
class Terms:
    """One policy's share of the loss's tokens for a rollout: [B*G, T] each."""

    logp: torch.Tensor
    old_logp: torch.Tensor
    kl: torch.Tensor | None


@dataclass
class LatentGaussianPolicy:
    """Gaussian noise on the latents, `Z = mu + sigma * eps`."""

    sigma: Callable[[], torch.Tensor]
    """The current noise scale (fixed, or learned by the stage)."""
    sigma_ref: float
    """The reference policy's scale: the starting sigma."""
    seed: int
    num_generations: int
    logprob: str = "sum"
    """`sum` over the d dimensions (the density), or `mean` (CoLaR's; the KL is divided by d
    too, so its weight `beta` keeps its meaning relative to the policy term)."""

    def _per_dim(self, value: torch.Tensor, d: int) -> torch.Tensor:
        return value / d if self.logprob == "mean" else value

    def noise(self, step: int, slots: torch.Tensor, shape: tuple[int, ...], device) -> torch.Tensor:
        """eps for each question's G samples, [B*G, K, d], a function of (seed, step, slot):
        the same whichever rank or micro-batch rolls the question out, and after a resume."""
        g = self.num_generations
        return torch.cat(
            [
                sampling.gaussian(
                    sampling.key(self.seed, LATENT_STREAM, step, slot), (g, *shape), device
                )
                for slot in slots.tolist()
            ]
        )

    def sample(
        self, mu: torch.Tensor, step: int, slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Z, eps, log N(Z; mu, sigma^2) per latent) for means `mu` [B*G, K, d]."""
        sigma = self.sigma().detach()
        eps = self.noise(step, slots, tuple(mu.shape[1:]), mu.device)
        z = mu + sigma * eps
        return z, eps, self._per_dim(gaussian_logprob(z, mu, sigma), mu.shape[-1])

    def terms(
        self,
        z: torch.Tensor,
        old_logp: torch.Tensor,
        mu: torch.Tensor,
        mu_ref: torch.Tensor | None,
    ) -> Terms:
        """`mu` [B, K, d] under the current reasoner (with gradient), `mu_ref` the reference's."""
        g = self.num_generations
        sigma = self.sigma()
        d = mu.shape[-1]
        logp = self._per_dim(gaussian_logprob(z, mu.repeat_interleave(g, dim=0), sigma), d)
        kl = None
        if mu_ref is not None:
            ref = torch.tensor(self.sigma_ref, device=mu.device)
            kl = self._per_dim(gaussian_kl(mu, sigma, mu_ref, ref), d).repeat_interleave(g, dim=0)
        return Terms(logp, old_logp, kl)


@dataclass
class AnswerTokenPolicy:
    """Answers sampled from the frozen base given Z, scored token by token through it."""

    lm: LatentLM
    temperature: float
    seed: int
    num_generations: int

    def noise(self, step: int, slots: torch.Tensor) -> RowNoise:
        """Uniforms for sampled answer tokens, keyed by (slot, sample) like the latent noise."""
        g = self.num_generations
        rows = slots.to(self.lm.device).long().repeat_interleave(g) * g
        rows = rows + torch.arange(g, device=rows.device).repeat(len(slots))
        return RowNoise(sampling.key(self.seed, ANSWER_STREAM, step), rows)

    def log_prob(
        self, prefix: Prefix, z: torch.Tensor, answer_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-token log p(answer | prompt, Z) at the sampling temperature, [B*G, m];
        differentiable through the frozen base into Z."""
        return self.lm.answer_logprobs(
            prefix.fork(self.num_generations),
            z.to(self.lm.base.dtype),
            answer_ids,
            mask,
            temperature=self.temperature,
        )

    def terms(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> Terms:
        """With one iteration the sampling policy is the current one: the ratio is 1 (TRL's
        shortcut), so `old_logp` None means "this pass, detached"."""
        old = logp.detach() if old_logp is None else old_logp
        kl = None if ref_logp is None else k3_kl(logp, ref_logp) * mask
        return Terms(logp, old, kl)
