"""`stage=grpo_cot` settings: TRL's GRPO on LoRA adapters over explicit chain-of-thought.

Every key of `conf/stage/grpo_cot.yaml` is a field here; `stage.trl` passes any other
`trl.GRPOConfig` field through, checked against that class (no model or device needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lrt.errors import ConfigError
from lrt.modes import needs_reasoner, parse_mode

LENGTH_PENALTIES = ("none", "linear", "kimi")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
"""TRL 1.x's `GRPOConfig.loss_type` values."""
SCALE_REWARDS = ("group", "batch", "none")


_LRT_OWNED = frozenset(
    {
        "output_dir",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_generations",
        "max_completion_length",
        "report_to",
        "seed",
        "data_seed",
        "run_name",
        "save_strategy",
        "use_cpu",
        "remove_unused_columns",
    }
)
"""GRPOConfig fields derived from lrt's own keys; `stage.trl` may not set them."""


@dataclass
class LoraSettings:
    """`stage.lora`: the adapters peft adds to the base model."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Any = "all-linear"
    """`all-linear`, or a list of module names such as [q_proj, v_proj]."""


@dataclass
class RewardSettings:
    """`stage.reward`: correctness (1/0 from the grader) plus `length_coef` x a length term.

    `linear`: correct completions lose `length_coef * tokens / max_completion_length` (wrong
    ones get 0 whatever their length, so a short wrong answer never beats a long right one), as
    in length-penalised RL for efficient reasoning (Arora & Zanette, 2025).
    `kimi`: Kimi k1.5's length reward: within a question's group,
    `lambda = 0.5 - (len - min_len) / (max_len - min_len)` (0 when all lengths are equal);
    correct completions get `lambda`, wrong ones `min(0, lambda)`.
    """

    length_penalty: str = "none"
    length_coef: float = 1.0


@dataclass
class GRPOCoTSettings:
    """`conf/stage/grpo_cot.yaml`, checked (meanings in that file)."""

    name: str = "grpo_cot"
    max_steps: int = 20
    batch_size: int = 4
    num_generations: int = 4
    micro_batch_size: int | None = None
    thinking_budget: int = 96
    max_answer_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.0
    loss_type: str = "dapo"
    scale_rewards: Any = "group"
    """`group`, `batch`, `none` (Dr. GRPO); true is group, false is none."""
    epsilon: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    gradient_checkpointing: bool = False
    bf16: bool = False
    logging_steps: int = 1
    save_steps: int = 10
    save_total_limit: int | None = 2
    log_completions: bool = False
    eval_modes: list[str] = field(default_factory=lambda: ["nothink", "cot"])
    compare_base: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    trl: dict[str, Any] = field(default_factory=dict)

    @property
    def max_completion_length(self) -> int:
        """Thinking budget plus the answer: the longest completion TRL samples."""
        return self.thinking_budget + self.max_answer_tokens

    @property
    def completions_per_step(self) -> int:
        return self.batch_size * self.num_generations

    def __post_init__(self) -> None:
        def positive(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        micro = self.micro_batch_size
        checks = [
            ("max_steps", positive(self.max_steps), "must be positive"),
            ("batch_size", positive(self.batch_size), "must be positive"),
            ("num_generations", positive(self.num_generations) and self.num_generations >= 2,
             "must be at least 2 (GRPO compares samples of a question)"),
            ("micro_batch_size",
             micro is None or (positive(micro) and self.completions_per_step % micro == 0),
             f"must be null or divide batch_size x num_generations = {self.completions_per_step}"),
            ("thinking_budget", positive(self.thinking_budget), "must be positive"),
            ("max_answer_tokens", positive(self.max_answer_tokens), "must be positive"),
            ("temperature", self.temperature > 0, "must be > 0 (GRPO samples completions)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("learning_rate", self.learning_rate > 0, "must be positive"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be positive"),
            ("beta", self.beta >= 0, "must be >= 0"),
            ("loss_type", self.loss_type in LOSS_TYPES, f"is not one of {LOSS_TYPES}"),
            ("scale_rewards", isinstance(self.scale_rewards, bool)
             or self.scale_rewards in SCALE_REWARDS,
             f"must be true, false or one of {SCALE_REWARDS}"),
            ("epsilon", 0 <= self.epsilon < 1, "must be in [0, 1)"),
            ("epsilon_high", self.epsilon_high is None or self.epsilon_high >= 0,
             "must be >= 0 or null"),
            ("num_iterations", positive(self.num_iterations), "must be at least 1"),
            ("logging_steps", positive(self.logging_steps), "must be positive"),
            ("save_steps", positive(self.save_steps), "must be positive"),
            ("save_total_limit", self.save_total_limit is None
             or positive(self.save_total_limit), "must be positive or null"),
        ]  # fmt: skip
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"stage.{key}={getattr(self, key)!r} {why}")
        for label in self.eval_modes:
            try:
                parse_mode(label)
            except ConfigError as err:
                raise ConfigError(f"stage.eval_{err}") from None
            if needs_reasoner(label):
                raise ConfigError(
                    f"stage.eval_modes: {label!r} needs a reasoner, and this stage trains none "
                    "(use nothink or cot)"
                )
        lora, reward = self.lora, self.reward
        if not positive(lora.r):
            raise ConfigError(f"stage.lora.r={lora.r!r} must be a positive integer")
        if not lora.alpha > 0:
            raise ConfigError(f"stage.lora.alpha={lora.alpha!r} must be positive")
        if not 0 <= lora.dropout < 1:
            raise ConfigError(f"stage.lora.dropout={lora.dropout!r} must be in [0, 1)")
        if reward.length_penalty not in LENGTH_PENALTIES:
            raise ConfigError(
                f"stage.reward.length_penalty={reward.length_penalty!r} is not one of "
                f"{LENGTH_PENALTIES}"
            )
        if not reward.length_coef >= 0:
            raise ConfigError(f"stage.reward.length_coef={reward.length_coef!r} must be >= 0")
        if isinstance(lora.target_modules, list | tuple):
            lora.target_modules = [str(m) for m in lora.target_modules]
        check_trl_keys(self.trl)


def check_trl_keys(extra: Mapping[str, Any]) -> None:
    """`stage.trl` passes any other `trl.GRPOConfig` field through; names are checked here
    (against the class, no model or device needed); keys lrt sets itself are refused."""
    from trl import GRPOConfig

    valid = {f.name for f in fields(GRPOConfig)}
    for key in extra:
        if key not in valid:
            raise ConfigError(f"unknown key 'stage.trl.{key}': not a trl.GRPOConfig field")
        if key in _LRT_OWNED:
            raise ConfigError(f"stage.trl.{key} is set by lrt; remove it from stage.trl")
