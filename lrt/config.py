"""Checks on the composed config that run before any model is loaded.

Hydra already rejects unknown group options; these catch invalid values (K <= 0, unknown
task or stage, a path that does not exist) with one line naming the key.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lrt.backbone import backbone_config
from lrt.data.datamodule import PromptLimit, split_config
from lrt.data.prompts import PromptConfig
from lrt.data.tasks import TASKS, get_task, resolve_local
from lrt.errors import ConfigError, DataError, reject_unknown_keys
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


def split_identity(data: DictConfig, key: str) -> tuple[str, str | None, str | None] | None:
    """(task, split, resolved local file or None for the hub) that `data.<key>` reads, or None
    for a validation slice carved from the training split."""
    split = split_config(data[key], key)
    if split.from_train:
        return None
    task = split.task or data.task
    path = None
    if split.path is not None:
        try:
            path = str(resolve_local(get_task(task), str(split.split), Path(split.path)).resolve())
        except DataError:
            path = str(Path(split.path).resolve())
    return task, split.split, path


def check_val_is_not_test(data: DictConfig) -> None:
    """Validation chooses `reasoner/best`: on test questions, every `best` figure would be
    leaked. Refused unless `data.allow_val_on_test=true` says it is meant."""
    if data.get("val") is None or data.get("test") is None:
        return
    val, test = split_identity(data, "val"), split_identity(data, "test")
    if val is not None and val == test and not data.get("allow_val_on_test", False):
        where = test[2] or f"hub split {test[1]!r}"
        raise ConfigError(
            f"data.val and data.test both read task {test[0]!r} from {where}, so checkpoints "
            "would be chosen on test questions; set data.val.from_train=true to carve a "
            "validation slice out of train (or data.allow_val_on_test=true)"
        )


def validate_data(cfg: DictConfig) -> None:
    if cfg.data.task not in TASKS:
        raise ConfigError(
            f"data.task={cfg.data.task!r} is not a known task ({', '.join(sorted(TASKS))})"
        )
    for split in ("train", "val"):
        if cfg.data.get(split) is None:
            raise ConfigError(
                f"data.{split} is null: data.task={cfg.data.task!r} is an evaluation-only task "
                "here; train on another task and evaluate this one with evaluate.py"
            )
    for split in ("train", "val", "test"):
        if cfg.data.get(split) is not None:
            check_path(f"data.{split}.path", cfg.data[split].get("path"))
            check_split_task(cfg.data.task, split, cfg.data[split].get("task"))
    PromptConfig(**dict(cfg.data.prompt))
    PromptLimit.from_config(cfg.data, None)
    check_val_is_not_test(cfg.data)


def validate_guard(guard: DictConfig) -> None:
    """`guard.skip_nonfinite` and `guard.min_free_gb` (see conf/train.yaml)."""
    reject_unknown_keys(guard, ("skip_nonfinite", "min_free_gb"), "guard")
    skips = guard.skip_nonfinite
    if isinstance(skips, bool) or not isinstance(skips, int) or skips < 0:
        raise ConfigError(f"guard.skip_nonfinite={skips} must be a non-negative integer")
    if not isinstance(guard.min_free_gb, int | float) or guard.min_free_gb < 0:
        raise ConfigError(f"guard.min_free_gb={guard.min_free_gb} must be a number >= 0")


def validate_trainer(trainer: DictConfig) -> None:
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
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} is not used: set "
            "stage.max_grad_norm instead"
        )


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
    for key in ("val_every_n_steps", "checkpoint_every_n_steps"):
        value = cfg.stage.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"stage.{key}={value} must be a positive integer")
    validate_trainer(cfg.trainer)
    if cfg.stage.name == "sft":
        micro = cfg.stage.get("micro_batch_size")
        if micro is not None and (micro <= 0 or cfg.stage.batch_size % micro):
            raise ConfigError(
                f"stage.micro_batch_size={micro} must be null or a positive divisor of "
                f"stage.batch_size={cfg.stage.batch_size}"
            )
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
