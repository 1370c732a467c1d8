"""The composed `train.yaml` as one typed config, validated in one call before any model loads.

Each config group is a dataclass owned by the code it configures (`BackboneConfig` in
`backbone.py`, `ReasonerConfig` in `reasoner/`, `DataConfig` in `data/`, each stage's settings
in `training/settings.py` or its baseline's package); `validate_train` checks every group, so an
unknown key or a bad value anywhere fails with one line naming it, before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lrt.backbone import BackboneConfig
from lrt.data.settings import DataConfig
from lrt.errors import ConfigError
from lrt.modes import parse_mode
from lrt.reasoner import ReasonerConfig
from lrt.schema import plain, typed
from lrt.stages import get_stage

RENAMED = {
    "stage.sigma_min": "stage.sigma_min_scale",
    "stage.sigma_max": "stage.sigma_max_scale",
    "stage.val_max_answer_tokens": "data.max_answer_tokens",
    "final_eval.max_answer_tokens": "data.max_answer_tokens",
}
"""Keys that were renamed, so an old command line is told the new name."""


@dataclass
class GuardConfig:
    """What stops a run early, and what it may skip instead."""

    skip_nonfinite: int = 0
    """Batches with a NaN/inf loss or gradient skipped before stopping (0: stop at the first)."""
    min_free_gb: float = 1.0
    """Free space the run folder needs at start, so a full disk fails before training."""

    def __post_init__(self) -> None:
        if isinstance(self.skip_nonfinite, bool) or self.skip_nonfinite < 0:
            raise ConfigError(
                f"guard.skip_nonfinite={self.skip_nonfinite} must be a non-negative integer"
            )
        if self.min_free_gb < 0:
            raise ConfigError(f"guard.min_free_gb={self.min_free_gb} must be a number >= 0")


@dataclass
class FinalEvalConfig:
    """The held-out comparison printed at the end of training (on `data.test`)."""

    enabled: bool = True
    modes: list[str] = field(default_factory=lambda: ["lrt", "direct", "nothink"])
    """Decoded at `data.max_answer_tokens`; `cot@N` rows think for N tokens first."""
    blind: bool = True
    """Add `lrt-blind` after `lrt` (and its swap control): what the latents alone carry."""
    batch_size: int = 32

    def __post_init__(self) -> None:
        for mode in self.modes:
            try:
                parse_mode(mode)
            except ConfigError as err:
                raise ConfigError(f"final_eval.{err}") from None
        if self.batch_size <= 0:
            raise ConfigError(f"final_eval.batch_size={self.batch_size} must be positive")


@dataclass
class TrainConfig:
    """A whole training job."""

    model: BackboneConfig
    reasoner: ReasonerConfig
    data: DataConfig
    stage: Any
    """The stage's settings (`lrt.stages`: SFTSettings, GRPOSettings, GRPOCoTSettings)."""
    trainer: dict[str, Any]
    """Lightning `Trainer` arguments, passed through (see `check_trainer`)."""
    logger: dict[str, Any] | None
    paths: dict[str, Any]
    guard: GuardConfig
    final_eval: FinalEvalConfig
    seed: int = 0
    run_name: str | None = None
    run_dir: str | None = None
    ckpt_path: str | None = None
    init_from: str | None = None


def check_trainer(trainer: dict[str, Any]) -> None:
    """Trainer keys whose job the stages do themselves, refused with the key to use instead.

    Every stage accumulates micro-batches into one optimiser step itself (so the data order,
    the loss normalisation and exact resume stay per optimiser step) and clips its own
    gradients, so Lightning's versions of both would break that arithmetic.
    """
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if accumulate != 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={accumulate} is not supported: set "
            "stage.micro_batch_size to split each step's batch into accumulated micro-batches"
        )
    if trainer.get("gradient_clip_val") is not None:
        raise ConfigError(
            f"trainer.gradient_clip_val={trainer['gradient_clip_val']} is not used: set "
            "stage.max_grad_norm instead"
        )


def check_renamed(raw: dict[str, Any]) -> None:
    for old, new in RENAMED.items():
        group, key = old.split(".", 1)
        if key in (raw.get(group) or {}):
            raise ConfigError(f"{old} is now {new}")


def check_top_level(raw: dict[str, Any]) -> None:
    """A key at the top of the composition that no group owns (`+foo=1`, a typo of a group
    name) is refused like an unknown key inside a group."""
    known = {f.name for f in fields(TrainConfig)} | {"hydra"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}; known top-level keys: {', '.join(sorted(known))}"
        )


def check_path(key: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise ConfigError(f"{key}={value} does not exist")


def validate_train(cfg: DictConfig | dict[str, Any]) -> TrainConfig:
    """Validate a `train.yaml` composition into typed settings; a ConfigError names the key."""
    raw = plain(cfg)
    check_top_level(raw)
    check_renamed(raw)
    stage = raw.get("stage") or {}
    settings = get_stage(str(stage.get("name"))).settings
    data = typed(DataConfig, raw.get("data"), "data")
    data.require_training_splits()
    trainer = dict(raw.get("trainer") or {})
    check_trainer(trainer)
    for key in ("ckpt_path", "init_from"):
        check_path(key, raw.get(key))
    if "max_answer_tokens" in stage and stage["max_answer_tokens"] is None:
        stage = {**stage, "max_answer_tokens": data.max_answer_tokens}  # one budget per run
    return TrainConfig(
        model=typed(BackboneConfig, raw.get("model"), "model"),
        reasoner=typed(ReasonerConfig, raw.get("reasoner"), "reasoner"),
        data=data,
        stage=typed(settings, stage, "stage"),
        trainer=trainer,
        logger=raw.get("logger"),
        paths=dict(raw.get("paths") or {}),
        guard=typed(GuardConfig, raw.get("guard"), "guard"),
        final_eval=typed(FinalEvalConfig, raw.get("final_eval"), "final_eval"),
        seed=int(raw.get("seed", 0)),
        run_name=raw.get("run_name"),
        run_dir=raw.get("run_dir"),
        ckpt_path=raw.get("ckpt_path"),
        init_from=raw.get("init_from"),
    )
