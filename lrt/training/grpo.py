"""GRPO stage (DESIGN.md sections 1 and 4): sample, grade, take clipped-ratio steps on the reasoner.

What is sampled is `stage.exploration`:

- `latent`: Gaussian noise on the latents, `Z = mu + sigma * eps`, answers decoded greedily.
  The policy's log-probability is the Gaussian density of Z, so the frozen base only runs
  forward and no gradient passes through it: a step costs little more than the rollouts, but
  one reward per sample is all the signal for K x d noise dimensions.
- `answer` (the paper's Algorithm 1, `conf/stage/grpo.yaml`'s default since it was measured to
  win on arith): deterministic latents `Z = mu`, answers sampled from the frozen base
  (temperature, top-p). The log-probability of an answer is the sum of its token log-probs
  given Z, so gradients flow back through the frozen base into Z (its weights get none).
- `both`: Gaussian latents and sampled answers; a sample's log-probability is the latent term
  (each latent vector a token, Z held fixed) plus the answer term (each answer token, Z
  re-parameterised as `mu + sigma * eps` with eps held fixed). Each term alone is a
  score-function estimate of the policy gradient through one source of randomness.

Per batch of B questions: encode each prompt once, take the reasoner's means, draw G samples
per question and decode the B*G answers in batched calls on the prompt cache expanded G times
(`rollout_batch_size` questions a call, default all), grade them, and take `num_iterations`
clipped-ratio optimiser steps on the same rollouts. `micro_batch_size` splits the rollouts into
chunks that are back-propagated one at a time, accumulating gradients into one optimiser step
(the loss is the mean of the chunks' losses, as TRL's gradient accumulation has it). The
randomness is keyed by each question's slot in the global batch, so the rollouts do not depend
on either size. The two sources of randomness are the policies of `lrt/training/policies.py`.

Step counting: `stage.max_steps` counts optimiser steps, which is what Lightning's
`global_step` counts under manual optimisation and what TRL's `max_steps` means; a run therefore
draws `max_steps / num_iterations` batches of rollouts.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn

from lrt.data.collate import pad_token_rows
from lrt.data.records import Record
from lrt.errors import CheckpointError
from lrt.grading import extract, grade
from lrt.lm.latent_lm import LatentLM
from lrt.lm.prefix import Prefix
from lrt.training.base import StageModule
from lrt.training.difficulty import PassRates
from lrt.training.grpo_loss import (
    group_advantages,
    log_sigma_bounds,
    loss_units,
    policy_loss_sum,
    zero_std_groups,
)
from lrt.training.policies import AnswerTokenPolicy, LatentGaussianPolicy, Terms
from lrt.training.pool import batch_rollouts, pool_rollouts
from lrt.training.rollout import Rollout
from lrt.training.sampled_validation import SampledValidation
from lrt.training.samples import log_samples
from lrt.training.settings import GRPOSettings
from lrt.training.step_metrics import LossStats, step_metrics

log = logging.getLogger(__name__)


class GRPOModule(SampledValidation, StageModule):
    """Trains the reasoner's means (and optionally sigma) with group-relative policy gradients."""

    stage_name = "grpo"

    def __init__(self, lm: LatentLM, task: str, settings: GRPOSettings, **run: int) -> None:
        super().__init__(lm, task, settings, **run)
        self.settings: GRPOSettings = settings
        seed = self.seed
        self.sigma_init = settings.sigma_scale * lm.backbone.embedding_rms()
        # log(sigma / sigma_init): weight decay then pulls sigma back to its start, not to 1.
        self.log_sigma = nn.Parameter(torch.zeros(())) if settings.learn_sigma else None
        # Only the reasoner is copied (the base is shared); its weights go into checkpoints so a
        # resumed run keeps the KL anchored to the starting point, not to the resumed weights.
        self.ref_reasoner = (
            copy.deepcopy(self.reasoner).requires_grad_(False) if settings.beta > 0 else None
        )
        g = settings.num_generations
        self._pass_rates: PassRates | None = None
        self._pass_rate_state: dict[str, torch.Tensor] | None = None
        self.latent_policy = (
            LatentGaussianPolicy(self.sigma, self.sigma_init, seed, g, settings.latent_logprob)
            if settings.samples_latents
            else None
        )
        self.answer_policy = (
            AnswerTokenPolicy(lm, settings.temperature, seed, g)
            if settings.samples_answers
            else None
        )

    def train(self, mode: bool = True) -> GRPOModule:
        """Keep the reasoner's dropout off (TRL's `disable_dropout`): the means the answers are
        sampled around must be the means the loss scores them under, or the ratio is not 1 at
        the first iteration and the policy gradient is biased by the dropout noise."""
        super().train(mode)
        self.reasoner.eval()
        if self.ref_reasoner is not None:
            self.ref_reasoner.eval()
        return self

    @property
    def rollout_tokens(self) -> int:
        """The rollouts' answer budget: `stage.max_answer_tokens`, else validation's."""
        return self.settings.max_answer_tokens or self.answer_tokens

    @property
    def pass_rates(self) -> PassRates | None:
        """Difficulty-aware selection's state, built (with a resumed run's saved state) by the
        first step, never by a checkpoint: under val_at_start's inference mode it would freeze."""
        if not self.settings.difficulty.enabled:
            return None
        if self._pass_rates is None:
            n = len(self.trainer.datamodule.train_records)
            self._pass_rates = PassRates(n, self.settings.difficulty)
            if self._pass_rate_state is not None:
                self._pass_rates.load_state_dict(self._pass_rate_state)
        return self._pass_rates

    def trainable_parameters(self) -> list[nn.Parameter]:
        extra = [self.log_sigma] if self.log_sigma is not None else []
        return [*self.reasoner.parameters(), *extra]

    # --- sigma -------------------------------------------------------------------------------

    def _log_sigma_bounds(self) -> tuple[float, float]:
        s = self.settings
        return log_sigma_bounds(s.sigma_scale, s.sigma_min_scale, s.sigma_max_scale)

    def sigma(self) -> torch.Tensor:
        """The latent noise scale: fixed, or learned and clamped to its configured range."""
        if self.log_sigma is None:
            return torch.tensor(self.sigma_init, device=self.lm.device)
        return self.sigma_init * self.log_sigma.clamp(*self._log_sigma_bounds()).exp()

    def _project_sigma(self) -> None:
        """Keep the parameter itself in range, so it never drifts where its gradient is zero."""
        if self.log_sigma is not None:
            with torch.no_grad():
                self.log_sigma.clamp_(*self._log_sigma_bounds())

    def _means(self, reasoner: nn.Module, prefix: Prefix) -> torch.Tensor:
        """mu [B, K, d] in float32, rounded to the base's dtype exactly as decoding sees it."""
        return reasoner(prefix.hidden, prefix.reasoner_mask).to(self.lm.base.dtype).float()

    # --- rollouts ----------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        records: list[Record],
        slots: torch.Tensor | None = None,
        step: int | None = None,
    ) -> Rollout:
        """Sample G (latents, answer) pairs per question, decoding all B*G in one batched call.

        `slots` are the questions' positions in the global batch and `step` the optimiser step
        (default: 0..B-1 and the current step); the randomness is keyed by both.
        """
        s = self.settings
        g = s.num_generations
        step = self.global_step if step is None else step
        slots = torch.arange(len(records)) if slots is None else slots
        prefix = self.lm.encode(input_ids, attention_mask)
        mu = self._means(self.reasoner, prefix).repeat_interleave(g, dim=0)
        z, noise, old_latent_logp = mu, None, None
        if self.latent_policy is not None:
            z, noise, old_latent_logp = self.latent_policy.sample(mu, step, slots)
        answers = self.answer_policy
        gen = self.lm.generate(
            prefix,
            "lrt",
            latents=z.to(self.lm.base.dtype),
            max_answer_tokens=self.rollout_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            noise=answers.noise(step, slots) if answers is not None else None,
            all_done=self.all_done if self._trainer is not None else None,
            repeats=g,
        )
        rows = [r for r in records for _ in range(g)]
        correct = torch.tensor(
            [grade(self.task, t, r) for t, r in zip(gen.texts, rows, strict=True)]
        )
        rewards = correct.float()
        if s.format_reward:
            answered = torch.tensor([extract(self.task, t) is not None for t in gen.texts])
            rewards = rewards + s.format_reward * answered.float()
        real = (slots >= 0).repeat_interleave(g).to(mu.device)
        rollout = Rollout(
            prefix=prefix,
            latents=z,
            noise=noise,
            old_latent_logp=old_latent_logp,
            rewards=rewards,
            correct=correct,
            advantages=group_advantages(rewards, g, s.scale_rewards).to(mu.device) * real,
            zero_std=zero_std_groups(rewards, g),
            real=real,
            mask=mu.new_ones(len(rows), self.reasoner.num_latents if noise is not None else 0),
            generation=gen,
            records=rows,
        )
        if answers is not None:
            ids, mask = pad_token_rows(gen.token_ids, self.lm.tokenizer.pad_token_id)
            rollout.answer_ids, rollout.answer_mask = ids.to(mu.device), mask.to(mu.device)
            assert gen.sampled_logprobs is not None
            drawn = torch.zeros(ids.shape)
            for i, row in enumerate(gen.sampled_logprobs):
                drawn[i, : len(row)] = torch.tensor(row)
            rollout.drawn_answer_logp = drawn.to(mu.device)
            rollout.mask = torch.cat([rollout.mask, rollout.answer_mask.to(mu.dtype)], dim=1)
        rollout.mask = rollout.mask * rollout.loss_rows(s.mask_truncated_completions)[:, None]
        return rollout

    def score_answers(self, rollout: Rollout) -> None:
        """The answers' log-probs under the sampling policy (more than one iteration) and the
        reference reasoner (the KL), before any optimiser step of this batch.

        Called on the micro-batch pieces the loss will take, after dynamic sampling kept its
        groups: a rollout batch holds more rows than one pass through the base may (paper_grpo:
        128 questions x 8 answers of 2048), and the pieces' prompt-cache rows are copied once,
        for these passes and the loss's alike, with no pass spent on discarded groups.
        """
        s = self.settings
        if self.answer_policy is None or (s.num_iterations == 1 and self.ref_reasoner is None):
            return
        ids, mask = rollout.answer_ids, rollout.answer_mask
        assert ids is not None and mask is not None
        log_prob = self.answer_policy.log_prob
        if s.num_iterations > 1:
            rollout.old_answer_logp = log_prob(rollout.prefix, rollout.latents, ids, mask)
        if self.ref_reasoner is not None:
            z_ref = self._latents(self.ref_reasoner, rollout)
            rollout.ref_answer_logp = log_prob(rollout.prefix, z_ref, ids, mask)

    # --- the objective -----------------------------------------------------------------------

    def _latents(self, reasoner: nn.Module, rollout: Rollout) -> torch.Tensor:
        """Z as a function of `reasoner` for the answer term: its means (answer exploration) or
        its means moved by the rollout's own noise (both), [B*G, K, d]."""
        g = self.settings.num_generations
        z = self._means(reasoner, rollout.prefix).repeat_interleave(g, dim=0)
        if rollout.noise is not None:
            z = z + self.sigma() * rollout.noise
        return z

    def policy_terms(self, rollout: Rollout) -> list[Terms]:
        """Each active policy's tokens under the current reasoner (with gradient)."""
        terms = []
        if self.latent_policy is not None:
            assert rollout.old_latent_logp is not None
            mu = self._means(self.reasoner, rollout.prefix)
            mu_ref = None
            if self.ref_reasoner is not None:
                with torch.no_grad():
                    mu_ref = self._means(self.ref_reasoner, rollout.prefix)
            terms.append(
                self.latent_policy.terms(rollout.latents, rollout.old_latent_logp, mu, mu_ref)
            )
        if self.answer_policy is not None:
            assert rollout.answer_ids is not None and rollout.answer_mask is not None
            logp = self.answer_policy.log_prob(
                rollout.prefix,
                self._latents(self.reasoner, rollout),
                rollout.answer_ids,
                rollout.answer_mask,
            )
            terms.append(
                self.answer_policy.terms(
                    logp, rollout.old_answer_logp, rollout.ref_answer_logp, rollout.answer_mask
                )
            )
        return terms

    def loss_sum(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Numerator of the clipped-ratio loss of the current policy on `rollout` (plus `beta`
        times the KL), to be divided by `loss_units` summed over chunks and ranks."""
        s = self.settings
        terms = self.policy_terms(rollout)
        mask = rollout.mask
        kls = [t.kl for t in terms if t.kl is not None]
        kl = torch.cat(kls, dim=1) if kls else None
        stats: dict[str, torch.Tensor] = {}
        if kl is not None:
            stats["kl"] = ((kl.detach() * mask).sum() / mask.sum().clamp(min=1)).detach()
        if rollout.drawn_answer_logp is not None:
            # The answer tokens' log-probs the loss takes for the sampling policy's against
            # those they were drawn with: 0 up to rounding, or the gradient is off-policy.
            assert rollout.answer_mask is not None
            gap = (terms[-1].old_logp.detach() - rollout.drawn_answer_logp).abs()
            stats["logratio_max"] = (gap * rollout.answer_mask * rollout.real[:, None]).max()
        total, stats["clip_frac"] = policy_loss_sum(
            torch.cat([t.logp for t in terms], dim=1),
            torch.cat([t.old_logp for t in terms], dim=1),
            rollout.advantages,
            loss_type=s.loss_type,
            epsilon_low=s.epsilon_low,
            epsilon_high=s.epsilon_high,
            kl=kl,
            beta=s.beta,
            mask=mask,
        )
        return total, stats

    def loss_units(self, rollout: Rollout) -> torch.Tensor:
        """This rollout's share of the loss's denominator (see `grpo_loss.loss_units`)."""
        s = self.settings
        max_tokens = (self.reasoner.num_latents if s.samples_latents else 0) + (
            self.rollout_tokens if s.samples_answers else 0
        )
        return loss_units(s.loss_type, rollout.mask, max_tokens, rollout.real)

    def loss(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss on one rollout alone: `loss_sum / loss_units`."""
        total, stats = self.loss_sum(rollout)
        return total / self.loss_units(rollout).clamp(min=1).to(total.device), stats

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Rollouts for the batch (in rollout batches, split into micro-batch chunks), then
        `num_iterations` optimiser steps on the global mean of the loss over chunks and ranks."""
        s = self.settings
        started = time.perf_counter()
        first_step = self.global_step
        pool: dict[str, float] = {}
        if s.uses_pool:  # the loader's batch only paces the steps; the pool picks the questions
            rollouts, pool = pool_rollouts(self, first_step)
        else:
            rollouts = batch_rollouts(self, batch, first_step)
        units = self.all_sum(sum(float(self.loss_units(r)) for r in rollouts))
        g = s.num_generations
        trained = rollouts
        if s.skips_equal_reward_groups:
            # A group with equal rewards has zero advantage: without a KL term its samples add
            # exactly nothing to the loss or its gradient, so the passes through the base skip
            # them (the denominator above still counts them, as TRL's loss does).
            trained = [r.keep_groups(~r.zero_std & r.real[::g].cpu(), g) for r in rollouts]
        stats, loss = LossStats(), 0.0

        def loss_sum(rollout: Rollout) -> torch.Tensor:
            total, values = self.loss_sum(rollout)
            stats.add(values, rollout.mask.sum())
            return total

        for _ in range(s.num_iterations):
            loss += float(self.optimizer_step_on(trained, loss_sum, units)) / s.num_iterations
            self._project_sigma()
        metrics = {
            **step_metrics(self, rollouts, stats, g),
            "loss": loss,
            "lr": self.lr_schedulers().get_last_lr()[0],
            "step_time_s": time.perf_counter() - started,
            **pool,
        }
        if s.samples_latents:
            metrics["sigma"] = self.sigma().detach()
        self.log_dict(
            {f"train/{k}": float(v) for k, v in metrics.items()},
            batch_size=batch["input_ids"].shape[0],
        )
        every = s.log_samples_every_n_steps
        # The batch covers steps [first_step, global_step): log if one of them is a multiple.
        if every and -(-first_step // every) * every < self.global_step:
            log_samples(self, rollouts[0], first_step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints from before the noise was keyed by step held a generator state instead.
        meta = checkpoint.get("lrt")
        if meta is not None and meta.get("stage") != "grpo" and "grpo_noise_rng" not in checkpoint:
            raise CheckpointError(
                "checkpoint has no GRPO state: resume GRPO from a GRPO checkpoint, and start "
                "from an SFT one with init_from=<checkpoint>"
            )
        self._pass_rate_state = checkpoint.get("grpo_pass_rates")
        super().on_load_checkpoint(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        rates = self._pass_rates
        state = rates.state_dict() if rates is not None else self._pass_rate_state
        if state is not None:
            checkpoint["grpo_pass_rates"] = state
