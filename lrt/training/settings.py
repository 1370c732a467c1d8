"""The `stage` config group as typed settings: what every stage shares, SFT's and GRPO's own.

Each field is documented once, here; `conf/stage/*.yaml` give the defaults a run starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lrt.errors import ConfigError
from lrt.training.grpo_loss import check_loss_type
from lrt.training.optim import OptimConfig

EXPLORATIONS = ("latent", "answer", "both")
LATENT_LOGPROBS = ("sum", "mean")
LATENT_LOSSES = ("none", "colar")


def _positive(value: int | float | None) -> bool:
    return value is not None and not isinstance(value, bool) and value > 0


@dataclass
class StageSettings:
    """Keys every reasoner-training stage has."""

    name: str = "sft"
    max_steps: int = 150
    """Optimiser steps (Lightning's `global_step`, TRL's meaning)."""
    batch_size: int = 16
    """The global batch, in questions: split across data-parallel ranks (DESIGN.md section 6)."""
    micro_batch_size: int | None = None
    """Questions per forward/backward pass on a rank (null: its whole slice); the chunks'
    gradients accumulate into one optimiser step."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping (null: none)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    val_every_n_steps: int = 50
    """Validation (greedy `lrt` at `data.max_answer_tokens` on `data.val`) every N steps."""
    val_batch_size: int | None = None
    """Validation questions decoded together on a rank (null: `batch_size`): its own width, so
    that validation need not decode in training-sized batches (on the default CPU job the gain
    was within noise: docs/default_recipe.md)."""
    val_limit: int | None = None
    """How many of `data.val`'s questions this stage validates on (null: `data.val.limit`),
    so that a stage that chooses its best checkpoint among close ones can validate on more
    questions than another (GRPO: 200, where 64 questions give +-12 points)."""
    checkpoint_every_n_steps: int = 50
    val_at_start: bool = False
    val_blind: bool = True
    """`lrt` validation also decodes with the question withheld from the base and logs
    `val/blind_accuracy`: what the latents alone carry (the channel)."""
    """Validate once before the first step (not on resume): the curves start at the reasoner
    the stage was given, and `reasoner/best` is that reasoner unless a step beats it."""

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size"):
            if not _positive(getattr(self, key)):
                raise ConfigError(f"stage.{key}={getattr(self, key)} must be positive")
        for key in ("val_every_n_steps", "checkpoint_every_n_steps"):
            value = getattr(self, key)
            if not _positive(value):
                raise ConfigError(f"stage.{key}={value} must be a positive integer")
        if self.val_limit is not None and not _positive(self.val_limit):
            raise ConfigError(
                f"stage.val_limit={self.val_limit} must be a positive integer or null"
            )
        if self.val_batch_size is not None and not _positive(self.val_batch_size):
            raise ConfigError(
                f"stage.val_batch_size={self.val_batch_size} must be a positive integer or null"
            )
        micro = self.micro_batch_size
        if micro is not None and not _positive(micro):
            raise ConfigError(f"stage.micro_batch_size={micro} must be a positive integer or null")
        if micro is not None and self.batch_size % micro:
            raise ConfigError(
                f"stage.batch_size={self.batch_size} must be a multiple of "
                f"stage.micro_batch_size={micro}"
            )
        if self.max_grad_norm is not None and not _positive(self.max_grad_norm):
            raise ConfigError(f"stage.max_grad_norm={self.max_grad_norm} must be positive or null")

    @property
    def steps_per_batch(self) -> int:
        """Optimiser steps taken on each batch (GRPO's `num_iterations`)."""
        return 1


@dataclass
class SFTSettings(StageSettings):
    """`stage=sft`: answer likelihood given the latents (DESIGN.md section 1)."""

    question_dropout: float = 0.0
    """The fraction of each batch's questions trained with the question withheld from the
    base (its attention mask 0 on the user's text, as `lrt-blind` evaluates), so that the
    latents must carry what the answer needs. Drawn per question from (seed, step, its place
    in the global batch): the same rows on any number of ranks, and again on resume."""

    latent_loss: str = "none"
    """An objective on the latents themselves beside the answer's likelihood: `colar` (CoLaR,
    Tan et al. 2025): latent i regresses the mean input embedding of the i-th of K equal
    chunks of the record's written solution (mean squared error over the embedding RMS
    squared), so the solution's content is put into Z; train it with the bare answer after the
    span (`data.prompt.target=answer`). `none`: the answer's likelihood alone."""
    latent_loss_weight: float = 1.0
    """The latent objective's weight against the mean answer-token NLL."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.question_dropout <= 1.0:
            raise ConfigError(f"stage.question_dropout={self.question_dropout} must be in [0, 1]")
        if self.latent_loss not in LATENT_LOSSES:
            raise ConfigError(
                f"stage.latent_loss={self.latent_loss!r} is not one of {LATENT_LOSSES}"
            )
        if self.latent_loss_weight < 0:
            raise ConfigError(f"stage.latent_loss_weight={self.latent_loss_weight} must be >= 0")


@dataclass
class ReconstructSettings(SFTSettings):
    """`stage=reconstruct`: ICAE-style autoencoding (Ge et al. 2024). The base sees the
    template and Z with the question withheld (every row, as `lrt-blind`) and is trained,
    through Z only, to write the question's own text. Every training question is free data;
    `init_from=<its reasoner>` starts SFT from it."""

    name: str = "reconstruct"


@dataclass
class DynamicSamplingSettings:
    """DAPO's dynamic sampling (verl's `filter_groups`): roll out candidate questions in
    batched rounds, drop the groups whose rewards are all equal, and stop once the step holds
    `batch_size` informative groups or `max_rounds` rounds have run."""

    enabled: bool = False
    round_size: int | None = None
    """Candidate questions rolled out per round, global (null: `stage.batch_size`)."""
    max_rounds: int = 4


@dataclass
class DifficultySettings:
    """Balanced online difficulty filtering: a pass-rate estimate per training question from
    its past rollouts (checkpointed), questions with an estimate strictly between 0 and 1
    rolled out first, and questions saturated (G of G, or 0 of G) `patience` times running
    kept out of the pool for `cooldown_steps` steps."""

    enabled: bool = False
    pool_factor: int = 2
    """Candidates drawn per step, as a multiple of the most the step can roll out; the
    preferred ones go first."""
    ema: float = 0.5
    """Weight of the newest group pass rate in the estimate."""
    patience: int = 2
    cooldown_steps: int = 50


@dataclass
class GRPOSettings(StageSettings):
    """`stage=grpo` (DESIGN.md sections 1, 4 and 7; `conf/stage/grpo.yaml` says which method
    each option comes from)."""

    name: str = "grpo"
    max_steps: int = 200
    batch_size: int = 8
    exploration: str = "latent"
    """`latent`: Gaussian noise on Z, greedy answers, no backward through the base. `answer`:
    the paper's: Z = mu, sampled answers, their log-probs back-propagated through the base into
    Z. `both`: Gaussian Z and sampled answers; the log-prob is the sum of the two terms."""
    num_generations: int = 8
    """G samples per question."""
    rollout_batch_size: int | None = None
    """Questions decoded together (times G rows) on a rank (null: its whole share of the batch,
    or of a dynamic-sampling round): apart from `micro_batch_size`, so that a backward of one
    question at a time does not also decode G rows at a time. Each rollout batch is then split
    into micro-batches for the loss (the whole rollout batch when `micro_batch_size` is null)."""
    temperature: float = 0.0
    """Answer decoding: 0 is greedy; must be > 0 for `answer` and `both`."""
    top_p: float = 1.0
    max_answer_tokens: int | None = None
    """The rollouts' answer budget (null: `data.max_answer_tokens`, the budget validation and
    the final table decode at, so the answers rewarded are the answers scored)."""
    sigma_scale: float = 0.3
    """sigma as a ratio of the base's mean token-embedding RMS (`latent`, `both`)."""
    learn_sigma: bool = False
    """Learn log(sigma), clamped to [sigma_min_scale, sigma_max_scale] x the embedding RMS."""
    sigma_min_scale: float = 0.05
    sigma_max_scale: float = 1.0
    scale_rewards: bool = True
    """Divide advantages by the group's std; false is Dr. GRPO."""
    loss_type: str = "grpo"
    """TRL's normalisations over latent and answer tokens, matched to its `_compute_loss`:
    `grpo` (each sample's token mean, averaged), `bnpo` (each micro-batch's token mean),
    `dapo` (the token sum over the global batch's token count), `dr_grpo` (the token sum over
    samples times the most tokens a sample can have)."""
    mask_truncated_completions: bool = False
    """TRL's (DAPO's overlong filtering): a sample whose answer hit the rollout budget without
    EOS counts no loss tokens, since its reward grades a cut-off answer; it still counts in its
    group's advantage."""
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    """The ratio is clipped to [1 - epsilon_low, 1 + epsilon_high]."""
    num_iterations: int = 1
    """Optimiser steps on each batch of rollouts (1: plain REINFORCE with a group baseline)."""
    val_samples: int = 1
    """Answers per validation question sampled at `temperature` and `top_p` for `val/pass@1`
    (answer and both exploration; 0: greedy validation only)."""
    beta: float = 0.0
    """Weight of the KL to the starting reasoner (0: no reference pass)."""
    format_reward: float = 0.0
    """Bonus when the grader finds an answer in the text at all."""
    latent_logprob: str = "sum"
    """How the Gaussian log-density of a latent vector is taken over its d dimensions: `sum`
    (the density itself) or `mean` (CoLaR's: divided by d, with the KL, so that ratios stay
    near 1 when `num_iterations` > 1)."""
    dynamic_sampling: DynamicSamplingSettings = field(default_factory=DynamicSamplingSettings)
    difficulty: DifficultySettings = field(default_factory=DifficultySettings)
    log_samples_every_n_steps: int = 10
    """(question, answer, reward) rows: a wandb Table or `samples.jsonl`; 0 is off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss_type(self.loss_type)
        if self.exploration not in EXPLORATIONS:
            raise ConfigError(
                f"stage.exploration={self.exploration!r} is not one of {EXPLORATIONS}"
            )
        checks = [
            ("num_generations", self.num_generations >= 2, "must be at least 2"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("max_answer_tokens", self.max_answer_tokens is None or self.max_answer_tokens >= 1,
             "must be positive or null (data.max_answer_tokens)"),
            ("sigma_scale", self.sigma_scale > 0, "must be positive"),
            ("epsilon_low", 0 <= self.epsilon_low < 1, "must be in [0, 1)"),
            ("epsilon_high", self.epsilon_high >= 0, "must be >= 0"),
            ("num_iterations", self.num_iterations >= 1, "must be at least 1"),
            ("beta", self.beta >= 0, "must be >= 0"),
            ("val_samples", self.val_samples >= 0, "must be >= 0 (0 = greedy validation only)"),
            ("log_samples_every_n_steps", self.log_samples_every_n_steps >= 0,
             "must be >= 0 (0 = never)"),
            ("temperature", self.temperature > 0 or not self.samples_answers,
             f"must be > 0 with stage.exploration={self.exploration!r}: the answers are sampled"),
            ("learn_sigma", not self.learn_sigma or self.samples_latents,
             "needs latent noise: stage.exploration='latent' or 'both'"),
            ("latent_logprob", self.latent_logprob in LATENT_LOGPROBS,
             f"is not one of {LATENT_LOGPROBS}"),
        ]  # fmt: skip
        rollout, micro = self.rollout_batch_size, self.micro_batch_size
        if rollout is not None and not _positive(rollout):
            raise ConfigError(
                f"stage.rollout_batch_size={rollout} must be a positive integer or null"
            )
        if rollout is not None and micro is not None and rollout % micro:
            raise ConfigError(
                f"stage.rollout_batch_size={rollout} must be a multiple of "
                f"stage.micro_batch_size={micro}"
            )
        ds, df = self.dynamic_sampling, self.difficulty
        nested = [
            ("dynamic_sampling", "round_size", ds.round_size is None or _positive(ds.round_size),
             "must be a positive integer or null"),
            ("dynamic_sampling", "max_rounds", _positive(ds.max_rounds), "must be positive"),
            ("difficulty", "pool_factor", _positive(df.pool_factor), "must be positive"),
            ("difficulty", "ema", 0 < df.ema <= 1, "must be in (0, 1]"),
            ("difficulty", "patience", _positive(df.patience), "must be positive"),
            ("difficulty", "cooldown_steps", df.cooldown_steps >= 0, "must be >= 0"),
        ]  # fmt: skip
        for group, key, ok, why in nested:
            if not ok:
                value = getattr(getattr(self, group), key)
                raise ConfigError(f"stage.{group}.{key}={value} {why}")
        if self.learn_sigma:
            checks.append(
                (
                    "sigma_min_scale",
                    0 < self.sigma_min_scale <= self.sigma_scale <= self.sigma_max_scale,
                    f"must satisfy 0 < sigma_min_scale <= sigma_scale={self.sigma_scale} <= "
                    f"sigma_max_scale={self.sigma_max_scale}",
                )
            )
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"stage.{key}={getattr(self, key)} {why}")
        # Each batch advances global_step by num_iterations; Lightning stops, checkpoints and
        # validates on batch boundaries, so these step counts must fall on them.
        for key in ("max_steps", "checkpoint_every_n_steps", "val_every_n_steps"):
            if getattr(self, key) % self.num_iterations:
                raise ConfigError(
                    f"stage.{key}={getattr(self, key)} must be a multiple of "
                    f"stage.num_iterations={self.num_iterations}"
                )

    @property
    def steps_per_batch(self) -> int:
        return self.num_iterations

    @property
    def skips_equal_reward_groups(self) -> bool:
        """Whether a step's passes through the base may leave out the groups whose rewards are
        all equal: their zero advantage adds nothing to the loss without a KL term, unless the
        loss divides by the micro-batch's own token count (`bnpo`), which counts their tokens."""
        return self.beta == 0 and self.loss_type != "bnpo"

    @property
    def uses_pool(self) -> bool:
        """Whether steps draw their questions from a candidate pool (dynamic sampling or
        difficulty-aware selection) rather than take the sampler's batch as it is."""
        return self.dynamic_sampling.enabled or self.difficulty.enabled

    @property
    def round_size(self) -> int:
        """Questions rolled out per round: the batch, or the dynamic-sampling round."""
        ds = self.dynamic_sampling
        return (ds.round_size or self.batch_size) if ds.enabled else self.batch_size

    @property
    def max_rounds(self) -> int:
        return self.dynamic_sampling.max_rounds if self.dynamic_sampling.enabled else 1

    @property
    def pool_size(self) -> int:
        """Candidate questions drawn for a step (their order decides which are rolled out)."""
        factor = self.difficulty.pool_factor if self.difficulty.enabled else 1
        return self.round_size * self.max_rounds * factor

    @property
    def samples_latents(self) -> bool:
        """Whether the latents are Gaussian samples (else they are the reasoner's means)."""
        return self.exploration in ("latent", "both")

    @property
    def samples_answers(self) -> bool:
        """Whether the answers' token log-probs are part of the policy (gradient via the base)."""
        return self.exploration in ("answer", "both")
