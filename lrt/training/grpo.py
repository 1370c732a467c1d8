"""GRPO stage (DESIGN.md sections 1 and 4): sample, grade, take clipped-ratio steps on the reasoner.

What is sampled is `stage.exploration`:

- `latent` (our default): Gaussian noise on the latents, `Z = mu + sigma * eps`, answers decoded
  greedily. The policy's log-probability is the Gaussian density of Z, so the frozen base only
  runs forward and no gradient passes through it: a step costs little more than the rollouts.
- `answer` (the paper's Algorithm 1): deterministic latents `Z = mu`, answers sampled from the
  frozen base (temperature, top-p). The log-probability of an answer is the sum of its token
  log-probs given Z, so gradients flow back through the frozen base into Z (its weights get
  none).
- `both`: Gaussian latents and sampled answers; a sample's log-probability is the latent term
  (each latent vector a token, Z held fixed) plus the answer term (each answer token, Z
  re-parameterised as `mu + sigma * eps` with eps held fixed). Each term alone is a
  score-function estimate of the policy gradient through one source of randomness.

Per batch of B questions: encode each prompt once, take the reasoner's means, draw G samples
per question and decode all B*G answers in one batched call on the prompt cache expanded G
times, grade them, and take `num_iterations` clipped-ratio optimiser steps on the same
rollouts. `micro_batch_size` splits the B questions into chunks that are rolled out and
back-propagated one at a time, accumulating gradients into one optimiser step (the loss is the
mean of the chunks' losses, as TRL's gradient accumulation has it).

Step counting: `stage.max_steps` counts optimiser steps, which is what Lightning's
`global_step` counts under manual optimisation and what TRL's `max_steps` means; a run therefore
draws `max_steps / num_iterations` batches of rollouts.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lrt import sampling
from lrt.data.collate import pad_token_rows
from lrt.data.records import Record
from lrt.errors import CheckpointError, ConfigError, reject_unknown_keys
from lrt.grading import extract, grade
from lrt.latent_lm import Generation, LatentLM, Prefix
from lrt.sampling import RowNoise
from lrt.training.base import StageModule
from lrt.training.grpo_loss import (
    check_loss_type,
    gaussian_kl,
    gaussian_logprob,
    group_advantages,
    k3_kl,
    loss_units,
    policy_loss_sum,
    zero_std_groups,
)
from lrt.training.optim import OptimConfig, configure

STAGE_KEYS = frozenset(
    {
        "name",
        "max_steps",
        "batch_size",
        "optim",
        "val_every_n_steps",
        "val_max_answer_tokens",
        "checkpoint_every_n_steps",
    }
)
"""Keys of the `stage` group that train.py reads itself; the rest configure GRPO."""

SAMPLE_ROWS = 8
EXPLORATIONS = ("latent", "answer", "both")
LATENT_STREAM, ANSWER_STREAM = 1, 2
"""Key-path tags that keep the latent noise and the answer-token uniforms independent."""


@dataclass
class GRPOConfig:
    """The GRPO-specific keys of `conf/stage/grpo.yaml` (meanings in that file)."""

    exploration: str = "latent"
    num_generations: int = 8
    micro_batch_size: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_answer_tokens: int = 8
    sigma_scale: float = 0.3
    learn_sigma: bool = False
    sigma_min: float = 0.05
    sigma_max: float = 1.0
    scale_rewards: bool = True
    loss_type: str = "grpo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    num_iterations: int = 1
    beta: float = 0.0
    format_reward: float = 0.0
    max_grad_norm: float | None = 1.0
    log_samples_every_n_steps: int = 10

    def __post_init__(self) -> None:
        check_loss_type(self.loss_type)
        if self.exploration not in EXPLORATIONS:
            raise ConfigError(
                f"stage.exploration={self.exploration!r} is not one of {EXPLORATIONS}"
            )
        checks = [
            ("num_generations", self.num_generations >= 2, "must be at least 2"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("max_answer_tokens", self.max_answer_tokens >= 1, "must be positive"),
            ("sigma_scale", self.sigma_scale > 0, "must be positive"),
            ("epsilon_low", 0 <= self.epsilon_low < 1, "must be in [0, 1)"),
            ("epsilon_high", self.epsilon_high >= 0, "must be >= 0"),
            ("num_iterations", self.num_iterations >= 1, "must be at least 1"),
            ("beta", self.beta >= 0, "must be >= 0"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0,
             "must be positive or null"),
            ("log_samples_every_n_steps", self.log_samples_every_n_steps >= 0,
             "must be >= 0 (0 = never)"),
            ("micro_batch_size", self.micro_batch_size is None or self.micro_batch_size >= 1,
             "must be positive or null (null: the whole batch at once)"),
            ("temperature", self.temperature > 0 or not self.samples_answers,
             f"must be > 0 with stage.exploration={self.exploration!r}: the answers are sampled"),
            ("learn_sigma", not self.learn_sigma or self.samples_latents,
             "needs latent noise: stage.exploration='latent' or 'both'"),
        ]  # fmt: skip
        if self.learn_sigma:
            checks.append(
                (
                    "sigma_min",
                    0 < self.sigma_min <= self.sigma_scale <= self.sigma_max,
                    f"must satisfy 0 < sigma_min <= sigma_scale={self.sigma_scale} <= "
                    f"sigma_max={self.sigma_max}",
                )
            )
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"stage.{key}={getattr(self, key)} {why}")

    @property
    def samples_latents(self) -> bool:
        """Whether the latents are Gaussian samples (else they are the reasoner's means)."""
        return self.exploration in ("latent", "both")

    @property
    def samples_answers(self) -> bool:
        """Whether the answers' token log-probs are part of the policy (gradient via the base)."""
        return self.exploration in ("answer", "both")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GRPOConfig:
        reject_unknown_keys(raw, (f.name for f in fields(cls)), "stage")
        return cls(**raw)


def grpo_settings(stage: Mapping[str, Any]) -> GRPOConfig:
    """The GRPO settings of a `stage` config, checked; needs no model, so it can run first."""
    settings = GRPOConfig.from_dict({k: v for k, v in stage.items() if k not in STAGE_KEYS})
    # Each batch advances global_step by num_iterations; Lightning stops, checkpoints and
    # validates on batch boundaries, so these step counts must fall on them.
    for key in ("max_steps", "checkpoint_every_n_steps", "val_every_n_steps"):
        if stage[key] % settings.num_iterations:
            raise ConfigError(
                f"stage.{key}={stage[key]} must be a multiple of "
                f"stage.num_iterations={settings.num_iterations}"
            )
    micro = settings.micro_batch_size
    if micro is not None and stage["batch_size"] % micro:
        raise ConfigError(
            f"stage.batch_size={stage['batch_size']} must be a multiple of "
            f"stage.micro_batch_size={micro}"
        )
    return settings


@dataclass
class Rollout:
    """One chunk of questions with their sampled latents and answers and the rewards; no grad."""

    prefix: Prefix
    """The B encoded prompts; later passes rerun only the reasoner on `prefix.hidden`."""
    latents: torch.Tensor
    """Z the answers were decoded from, [B*G, K, d] float32, a question's G samples consecutive
    (the reasoner's means when the latents are not sampled)."""
    noise: torch.Tensor | None
    """eps with `Z = mu + sigma * eps`, [B*G, K, d] (None when the latents are not sampled)."""
    old_latent_logp: torch.Tensor | None
    """log N(Z; mu, sigma^2) per latent vector under the sampling policy, [B*G, K]."""
    answer_ids: torch.Tensor | None
    """The sampled answers' tokens (EOS included when reached), right-padded, [B*G, m]."""
    answer_mask: torch.Tensor | None
    old_answer_logp: torch.Tensor | None
    """Per answer token log-prob under the sampling policy, [B*G, m]; None with one iteration,
    where the current policy is the sampling one (TRL's shortcut: the ratio is 1)."""
    ref_answer_logp: torch.Tensor | None
    """Per answer token log-prob under the reference reasoner (for the k3 KL), or None."""
    rewards: torch.Tensor
    correct: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    """Which policy tokens count, [B*G, T]: the K latents (when sampled), then the answer
    tokens (when sampled); what the loss type averages over."""
    zero_std: torch.Tensor
    """Groups whose rewards are all equal, [B]: they carry no learning signal."""
    real: torch.Tensor
    """Which samples are real, [B*G]: a rank's padding question (slot -1) carries no loss."""
    generation: Generation
    records: list[Record]
    """One per sample (each question's record repeated G times)."""


class GRPOModule(StageModule):
    """Trains the reasoner's means (and optionally sigma) with group-relative policy gradients."""

    stage_name = "grpo"

    def __init__(
        self,
        lm: LatentLM,
        task: str,
        optim: OptimConfig,
        settings: GRPOConfig,
        max_steps: int,
        seed: int = 0,
        val_max_answer_tokens: int = 16,
    ) -> None:
        super().__init__(lm, task, val_max_answer_tokens, settings.max_grad_norm)
        self.optim = optim
        self.settings = settings
        self.max_steps = max_steps
        self.embed_rms = lm.backbone.embedding_rms()
        self.sigma_init = settings.sigma_scale * self.embed_rms
        # log(sigma / sigma_init): weight decay then pulls sigma back to its start, not to 1.
        self.log_sigma = nn.Parameter(torch.zeros(())) if settings.learn_sigma else None
        # Only the reasoner is copied (the base is shared); its weights go into checkpoints so a
        # resumed run keeps the KL anchored to the starting point, not to the resumed weights.
        # It follows the module's train/eval mode, like the policy it is compared with.
        self.ref_reasoner = (
            copy.deepcopy(self.reasoner).requires_grad_(False) if settings.beta > 0 else None
        )
        self.seed = seed

    @classmethod
    def from_config(cls, lm: LatentLM, cfg: DictConfig, optim: OptimConfig) -> GRPOModule:
        """Build from the composed train config (`cfg.stage` is `conf/stage/grpo.yaml`)."""
        stage = OmegaConf.to_container(cfg.stage, resolve=True)
        return cls(
            lm,
            cfg.data.task,
            optim,
            grpo_settings(stage),
            max_steps=stage["max_steps"],
            seed=cfg.seed,
            val_max_answer_tokens=stage["val_max_answer_tokens"],
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

    # --- the policy --------------------------------------------------------------------------

    def _log_sigma_bounds(self) -> tuple[float, float]:
        """log(sigma_min / sigma_scale), log(sigma_max / sigma_scale), rounded inwards to float32
        so that the clamped float32 parameter never lies outside the configured range."""
        s = self.settings
        lo, hi = math.log(s.sigma_min / s.sigma_scale), math.log(s.sigma_max / s.sigma_scale)
        lo32, hi32 = torch.tensor(lo), torch.tensor(hi)
        if float(lo32) < lo:
            lo32 = lo32.nextafter(torch.tensor(math.inf))
        if float(hi32) > hi:
            hi32 = hi32.nextafter(torch.tensor(-math.inf))
        return float(lo32), float(hi32)

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
        return reasoner(prefix.hidden, prefix.mask).to(self.lm.base.dtype).float()

    # --- rollouts ----------------------------------------------------------------------------

    def latent_noise(self, step: int, slots: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """eps for each question's G samples, [B*G, K, d], a function of (seed, step, slot):
        the same whichever rank or micro-batch rolls the question out, and after a resume."""
        device = self.lm.device
        return torch.cat(
            [
                sampling.gaussian(sampling.key(self.seed, LATENT_STREAM, step, slot), shape, device)
                for slot in slots.tolist()
            ]
        )

    def answer_noise(self, step: int, slots: torch.Tensor) -> RowNoise:
        """Uniforms for sampled answer tokens, keyed by (slot, sample) like the latent noise."""
        g = self.settings.num_generations
        rows = slots.to(self.lm.device).long().repeat_interleave(g) * g
        rows = rows + torch.arange(g, device=rows.device).repeat(len(slots))
        return RowNoise(sampling.key(self.seed, ANSWER_STREAM, step), rows)

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
        noise = old_latent_logp = None
        z = mu
        if s.samples_latents:
            sigma = self.sigma().detach()
            noise = self.latent_noise(step, slots, (g, *mu.shape[1:]))
            z = mu + sigma * noise
            old_latent_logp = gaussian_logprob(z, mu, sigma)
        gen = self.lm.generate(
            prefix.fork(g),
            "lrt",
            latents=z.to(self.lm.base.dtype),
            max_answer_tokens=s.max_answer_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            noise=self.answer_noise(step, slots) if s.samples_answers else None,
            all_done=self.all_done if self._trainer is not None else None,
        )
        rows = [r for r in records for _ in range(g)]
        correct = torch.tensor(
            [grade(self.task, t, r) for t, r in zip(gen.texts, rows, strict=True)]
        )
        rewards = correct.float()
        if s.format_reward:
            answered = torch.tensor([extract(self.task, t) is not None for t in gen.texts])
            rewards = rewards + s.format_reward * answered.float()
        rollout = Rollout(
            prefix=prefix,
            latents=z,
            noise=noise,
            old_latent_logp=old_latent_logp,
            answer_ids=None,
            answer_mask=None,
            old_answer_logp=None,
            ref_answer_logp=None,
            rewards=rewards,
            correct=correct,
            advantages=group_advantages(rewards, g, s.scale_rewards).to(mu.device),
            zero_std=zero_std_groups(rewards, g),
            real=(slots >= 0).repeat_interleave(g).to(mu.device),
            mask=mu.new_ones(len(rows), self.reasoner.num_latents if s.samples_latents else 0),
            generation=gen,
            records=rows,
        )
        if s.samples_answers:
            ids, mask = pad_token_rows(gen.token_ids, self.lm.tokenizer.pad_token_id)
            rollout.answer_ids, rollout.answer_mask = ids.to(mu.device), mask.to(mu.device)
            rollout.mask = torch.cat([rollout.mask, rollout.answer_mask.to(mu.dtype)], dim=1)
            if s.num_iterations > 1:
                rollout.old_answer_logp = self._answer_logprobs(rollout, z)
            if self.ref_reasoner is not None:
                rollout.ref_answer_logp = self._answer_logprobs(
                    rollout, self._latents(self.ref_reasoner, rollout)
                )
        rollout.mask = rollout.mask * rollout.real.unsqueeze(1)
        rollout.advantages = rollout.advantages * rollout.real
        return rollout

    # --- the objective -----------------------------------------------------------------------

    def _latents(self, reasoner: nn.Module, rollout: Rollout) -> torch.Tensor:
        """Z as a function of `reasoner` for the answer term: its means (answer exploration) or
        its means moved by the rollout's own noise (both), [B*G, K, d]."""
        g = self.settings.num_generations
        z = self._means(reasoner, rollout.prefix).repeat_interleave(g, dim=0)
        if rollout.noise is not None:
            z = z + self.sigma() * rollout.noise
        return z

    def _answer_logprobs(self, rollout: Rollout, z: torch.Tensor) -> torch.Tensor:
        """Per-token log p(answer | prompt, Z) of the sampled answers at the sampling
        temperature, [B*G, m]; differentiable through the frozen base into Z."""
        assert rollout.answer_ids is not None and rollout.answer_mask is not None
        return self.lm.answer_logprobs(
            rollout.prefix.fork(self.settings.num_generations),
            z.to(self.lm.base.dtype),
            rollout.answer_ids,
            rollout.answer_mask,
            temperature=self.settings.temperature,
        )

    def loss_sum(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Numerator of the clipped-ratio loss of the current policy on `rollout` (plus `beta`
        times the KL), to be divided by `loss_units` summed over chunks and ranks.

        The tokens are the K latent vectors (latent term), the answer tokens (answer term), or
        both side by side; the loss type aggregates over all of them.
        """
        s = self.settings
        g = s.num_generations
        logps, olds, kls = [], [], []
        stats: dict[str, torch.Tensor] = {}
        if s.samples_latents:
            assert rollout.old_latent_logp is not None
            mu = self._means(self.reasoner, rollout.prefix)
            sigma = self.sigma()
            logp = gaussian_logprob(rollout.latents, mu.repeat_interleave(g, dim=0), sigma)
            logps.append(logp)
            olds.append(rollout.old_latent_logp)
            if self.ref_reasoner is not None:
                with torch.no_grad():
                    mu_ref = self._means(self.ref_reasoner, rollout.prefix)
                sigma_ref = torch.tensor(self.sigma_init, device=mu.device)
                kls.append(gaussian_kl(mu, sigma, mu_ref, sigma_ref).repeat_interleave(g, dim=0))
        if s.samples_answers:
            assert rollout.answer_mask is not None
            logp = self._answer_logprobs(rollout, self._latents(self.reasoner, rollout))
            logps.append(logp)
            old = rollout.old_answer_logp
            olds.append(logp.detach() if old is None else old)
            if rollout.ref_answer_logp is not None:
                kls.append(k3_kl(logp, rollout.ref_answer_logp) * rollout.answer_mask)
        mask = rollout.mask
        kl = torch.cat(kls, dim=1) if kls else None
        if kl is not None:
            stats["kl"] = ((kl.detach() * mask).sum() / mask.sum().clamp(min=1)).detach()
        total, stats["clip_frac"] = policy_loss_sum(
            torch.cat(logps, dim=1),
            torch.cat(olds, dim=1),
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
            s.max_answer_tokens if s.samples_answers else 0
        )
        return loss_units(s.loss_type, rollout.mask, max_tokens)

    def loss(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss on one rollout alone: `loss_sum / loss_units`."""
        total, stats = self.loss_sum(rollout)
        return total / self.loss_units(rollout).clamp(min=1).to(total.device), stats

    def batches_done(self) -> int:
        """Each batch of rollouts takes `num_iterations` optimiser steps."""
        return self.global_step // self.settings.num_iterations

    def total_batches(self) -> int:
        return self.trainer.max_steps // self.settings.num_iterations

    def _chunks(self, batch: dict[str, torch.Tensor]) -> list[slice]:
        """Question slices of `micro_batch_size` (one slice: the whole batch)."""
        b = batch["input_ids"].shape[0]
        size = self.settings.micro_batch_size or b
        return [slice(i, min(i + size, b)) for i in range(0, b, size)]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Rollouts for the batch (chunk by chunk), then `num_iterations` optimiser steps on the
        global mean of the loss over every chunk and rank."""
        s = self.settings
        started = time.perf_counter()
        records = self.trainer.datamodule.train_records
        first_step = self.global_step
        rollouts = [
            self.rollout(
                batch["input_ids"][c],
                batch["attention_mask"][c],
                [records[i] for i in batch["index"][c].tolist()],
                slots=batch["slot"][c],
                step=first_step,
            )
            for c in self._chunks(batch)
        ]
        units = self.all_sum(sum(float(self.loss_units(r)) for r in rollouts))
        totals: dict[str, float] = {}

        def loss_sum(rollout: Rollout) -> torch.Tensor:
            total, stats = self.loss_sum(rollout)
            for key, value in stats.items():
                share = float(value) / (s.num_iterations * len(rollouts))
                totals[key] = totals.get(key, 0.0) + share
            return total

        for _ in range(s.num_iterations):
            step_loss = self.optimizer_step_on(rollouts, loss_sum, units)
            self._project_sigma()
            totals["loss"] = totals.get("loss", 0.0) + float(step_loss) / s.num_iterations
        real = torch.cat([r.real for r in rollouts]).cpu()
        g = s.num_generations
        rewards = torch.cat([r.rewards for r in rollouts])[real]
        lengths = torch.tensor([n for r in rollouts for n in r.generation.num_generated])
        metrics = {
            "reward_mean": rewards.mean(),
            "reward_std": rewards.std(),
            "accuracy": torch.cat([r.correct for r in rollouts])[real].float().mean(),
            "frac_zero_std": torch.cat([r.zero_std for r in rollouts])[real[::g]].float().mean(),
            "answer_length": lengths[real].float().mean(),
            "lr": self.lr_schedulers().get_last_lr()[0],
            "step_time_s": time.perf_counter() - started,
            **totals,
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
            self._log_samples(rollouts[0], first_step)

    def _log_samples(self, rollout: Rollout, step: int) -> None:
        """A few (question, answer, reward) rows: a wandb Table, else `<run>/samples.jsonl`."""
        if not self.trainer.is_global_zero:
            return
        columns = ["step", "question", "answer", "gold", "reward"]
        rows = [
            [step, record.question, text, record.answer, float(reward)]
            for record, text, reward in zip(
                rollout.records[:SAMPLE_ROWS],
                rollout.generation.texts,
                rollout.rewards.tolist(),
                strict=False,
            )
        ]
        wandb = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        for logger in wandb:
            logger.log_table(key="train/samples", columns=columns, data=rows, step=step)
        if not wandb:
            path = Path(self.trainer.default_root_dir) / "samples.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                for row in rows:
                    f.write(json.dumps(dict(zip(columns, row, strict=True))) + "\n")

    def configure_optimizers(self) -> dict[str, Any]:
        params = list(self.reasoner.parameters())
        if self.log_sigma is not None:
            params.append(self.log_sigma)
        return configure(params, self.optim, self.max_steps)

    # --- checkpoints -------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints from before the noise was keyed by step held a generator state instead.
        meta = checkpoint.get("lrt")
        if meta is not None and meta.get("stage") != "grpo" and "grpo_noise_rng" not in checkpoint:
            raise CheckpointError(
                "checkpoint has no GRPO state: resume GRPO from a GRPO checkpoint, and start "
                "from an SFT one with init_from=<checkpoint>"
            )
        super().on_load_checkpoint(checkpoint)
