"""Checks on the composed config that run before any model is loaded.

Hydra already rejects unknown group options; these catch invalid values (K <= 0, unknown
task or stage, a path that does not exist) with one line naming the key.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lrt.backbone import backbone_config
from lrt.data.datamodule import PromptLimit
from lrt.data.prompts import PromptConfig
from lrt.data.tasks import TASKS
from lrt.errors import ConfigError, reject_unknown_keys
from lrt.reasoner import ReasonerConfig

STAGES = ("sft", "grpo", "grpo_cot")


def check_path(key: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise ConfigError(f"{key}={value} does not exist")


def validate_reasoner(raw: DictConfig) -> None:
    """The `reasoner` group; a pretrained body's `init_from` must exist when it is a path."""
    config = ReasonerConfig.from_dict(dict(raw))
    source = config.init_from
    if config.arch != "pretrained" or source in (None, "base"):
        return
    looks_local = source.endswith(".gguf") or source.startswith(("/", ".", "~"))
    if looks_local and not Path(source).expanduser().exists():
        raise ConfigError(f"reasoner.init_from={source} does not exist")


def check_split_task(task: str, split: str, other: str | None) -> None:
    """A split borrowed from another task must exist and be graded the same way."""
    if other is None:
        return
    if other not in TASKS:
        raise ConfigError(
            f"data.{split}.task={other!r} is not a known task ({', '.join(sorted(TASKS))})"
        )
    if TASKS[other].grader != TASKS[task].grader:
        raise ConfigError(
            f"data.{split}.task={other!r} is graded as {TASKS[other].grader!r}, but "
            f"data.task={task!r} as {TASKS[task].grader!r}"
        )


def validate_data(cfg: DictConfig) -> None:
    if cfg.data.task not in TASKS:
        raise ConfigError(
            f"data.task={cfg.data.task!r} is not a known task ({', '.join(sorted(TASKS))})"
        )
    for split in ("train", "val", "test"):
        if split in cfg.data:
            check_path(f"data.{split}.path", cfg.data[split].get("path"))
            check_split_task(cfg.data.task, split, cfg.data[split].get("task"))
    PromptConfig(**dict(cfg.data.prompt))
    PromptLimit.from_config(cfg.data, None)


def validate_guard(guard: DictConfig) -> None:
    """`guard.skip_nonfinite` and `guard.min_free_gb` (see conf/train.yaml)."""
    reject_unknown_keys(guard, ("skip_nonfinite", "min_free_gb"), "guard")
    skips = guard.skip_nonfinite
    if isinstance(skips, bool) or not isinstance(skips, int) or skips < 0:
        raise ConfigError(f"guard.skip_nonfinite={skips} must be a non-negative integer")
    if not isinstance(guard.min_free_gb, int | float) or guard.min_free_gb < 0:
        raise ConfigError(f"guard.min_free_gb={guard.min_free_gb} must be a number >= 0")


def validate_train(cfg: DictConfig) -> None:
    """Validate a `train.yaml` composition; raises ConfigError naming the offending key."""
    if cfg.stage.name not in STAGES:
        raise ConfigError(f"stage.name={cfg.stage.name!r} is not one of {STAGES}")
    backbone_config(cfg.model)
    validate_reasoner(cfg.reasoner)
    validate_data(cfg)
    check_path("ckpt_path", cfg.get("ckpt_path"))
    check_path("init_from", cfg.get("init_from"))
    if cfg.stage.max_steps <= 0:
        raise ConfigError(f"stage.max_steps={cfg.stage.max_steps} must be positive")
    if cfg.stage.batch_size <= 0:
        raise ConfigError(f"stage.batch_size={cfg.stage.batch_size} must be positive")
    if cfg.stage.name == "grpo":
        from lrt.training.grpo import grpo_settings

        grpo_settings(OmegaConf.to_container(cfg.stage, resolve=True))
    elif cfg.stage.name == "grpo_cot":
        from lrt.training.grpo_cot import grpo_cot_settings

        grpo_cot_settings(OmegaConf.to_container(cfg.stage, resolve=True))
    validate_guard(cfg.guard)
    if cfg.final_eval.enabled:
        from lrt.evaluation import parse_mode

        for mode in cfg.final_eval.modes:
            try:
                parse_mode(mode)
            except ConfigError as err:
                raise ConfigError(f"final_eval.{err}") from None
