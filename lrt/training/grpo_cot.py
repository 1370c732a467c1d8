"""Token-space RL baseline (`stage=grpo_cot`): GRPO with TRL on LoRA adapters over explicit CoT.

The efficient-reasoning methods the LRT paper compares with train the model itself to think
(shorter) in tokens. This stage reproduces that family in our harness, so the same evaluation
table can hold base, base+LoRA-GRPO and base+LRT: TRL's `GRPOTrainer` does the RL (sampling,
advantages, clipped loss, optimiser, checkpoints, resume), peft adds the LoRA adapters, and
lrt supplies only what must match the rest of the framework:

- the prompts: the chat-templated task prompt followed by the model's `think_open` marker, the
  same text evaluate.py's `cot` mode decodes from, so before/after numbers are comparable;
- the reward: `lrt.grading.grade` as 1/0, plus an optional length term (`reward_functions`);
- the run folder (`outputs/grpo_cot/<task>/<run>`), its `logs/metrics.csv` and loggers;
- the exported adapter (`adapter/final` + `lrt_adapter.json`) that evaluate.py loads.

Nothing here reimplements GRPO: `trl_config` only translates `conf/stage/grpo_cot.yaml`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lrt.data.records import Record
from lrt.errors import CheckpointError, ConfigError, reject_unknown_keys
from lrt.grading import grade

log = logging.getLogger(__name__)

LENGTH_PENALTIES = ("none", "linear", "kimi")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
"""TRL 1.x's `GRPOConfig.loss_type` values."""
SCALE_REWARDS = ("group", "batch", "none")
REPORT_TO = {"wandb": "wandb", "tensorboard": "tensorboard"}
"""lrt logger names that TRL reports to itself; `csv` is written by `MetricsCSV`."""


# --- settings --------------------------------------------------------------------------------


@dataclass
class LoraSettings:
    """`stage.lora`: the adapters peft adds to the base model."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


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
    scale_rewards: str | bool = "group"
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
        from lrt.evaluation import REASONER_MODES, parse_mode

        for label in self.eval_modes:
            try:
                mode, _ = parse_mode(label)
            except ConfigError as err:
                raise ConfigError(f"stage.eval_{err}") from None
            if mode in REASONER_MODES:
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


def _known(raw: Mapping[str, Any], cls: type, where: str) -> dict[str, Any]:
    reject_unknown_keys(raw, (f.name for f in fields(cls)), where)
    return dict(raw)


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


def grpo_cot_settings(stage: Mapping[str, Any]) -> GRPOCoTSettings:
    """The checked settings of a `stage=grpo_cot` config; needs no model, so it can run first."""
    raw = _known(stage, GRPOCoTSettings, "stage")
    raw["lora"] = LoraSettings(**_known(raw.get("lora") or {}, LoraSettings, "stage.lora"))
    raw["reward"] = RewardSettings(
        **_known(raw.get("reward") or {}, RewardSettings, "stage.reward")
    )
    raw["trl"] = dict(raw.get("trl") or {})
    if isinstance(raw["lora"].target_modules, list | tuple):
        raw["lora"].target_modules = [str(m) for m in raw["lora"].target_modules]
    raw["eval_modes"] = [str(m) for m in raw.get("eval_modes", ["nothink", "cot"])]
    settings = GRPOCoTSettings(**raw)
    check_trl_keys(settings.trl)
    return settings


# --- rewards ---------------------------------------------------------------------------------

RewardFunc = Callable[..., list[float]]


def kimi_length_terms(
    lengths: Sequence[int], correct: Sequence[bool], groups: Sequence[Any]
) -> list[float]:
    """Kimi k1.5's length reward per completion, min/max taken over each question's group."""
    members: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    out = [0.0] * len(lengths)
    for rows in members.values():
        lo = min(lengths[i] for i in rows)
        hi = max(lengths[i] for i in rows)
        for i in rows:
            lam = 0.5 - (lengths[i] - lo) / (hi - lo) if hi > lo else 0.0
            out[i] = lam if correct[i] else min(0.0, lam)
    return out


def reward_functions(
    task: str, records: Sequence[Record], reward: RewardSettings, max_completion_length: int
) -> list[RewardFunc]:
    """TRL reward functions: `correctness`, and with a length penalty a second one, `length`.

    Each is called as `f(prompts=..., completions=..., completion_ids=..., record_index=...,
    **kw)` (TRL passes the dataset's extra columns as keyword lists) and returns one float per
    completion; TRL sums them. Two functions rather than one so TRL logs accuracy
    (`rewards/correctness/mean`) and the length term separately. The length function reuses
    the verdicts of the correctness call on the same completions instead of grading twice.
    """
    last: dict[str, Any] = {"completions": None, "verdicts": []}

    def verdicts(completions: Sequence[str], record_index: Sequence[int]) -> list[bool]:
        if completions is not last["completions"]:
            last["verdicts"] = [
                grade(task, text, records[int(i)])
                for text, i in zip(completions, record_index, strict=True)
            ]
            last["completions"] = completions
        return last["verdicts"]

    def correctness(
        completions: Sequence[str], record_index: Sequence[int], **_: Any
    ) -> list[float]:
        return [float(v) for v in verdicts(completions, record_index)]

    funcs: list[RewardFunc] = [correctness]
    kind, coef = reward.length_penalty, reward.length_coef
    if kind == "none":
        return funcs

    def length(
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        record_index: Sequence[int],
        **_: Any,
    ) -> list[float]:
        correct = verdicts(completions, record_index)
        lengths = [len(ids) for ids in completion_ids]
        if kind == "linear":
            terms = [
                -n / max_completion_length if ok else 0.0
                for n, ok in zip(lengths, correct, strict=True)
            ]
        else:
            terms = kimi_length_terms(lengths, correct, record_index)
        return [coef * t for t in terms]

    length.__name__ = f"length_{kind}"
    funcs.append(length)
    return funcs


# --- data ------------------------------------------------------------------------------------


def cot_prompt(prompt_text: str, think_open: str, tokenizer: Any) -> str:
    """The prompt TRL tokenizes: the chat-templated text plus the thinking marker (unless the
    template already ends with it, as DeepSeek-R1-Distill's does), minus a leading BOS that the
    tokenizer adds again itself (TRL tokenizes with special tokens)."""
    text = prompt_text if prompt_text.endswith(think_open) else prompt_text + think_open
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        ids = tokenizer("a").input_ids
        if ids and ids[0] == tokenizer.bos_token_id:
            text = text[len(bos) :]
    return text


def build_dataset(
    records: Sequence[Record], tokenizer: Any, prompt: Any, system: str | None, think_open: str
) -> Any:
    """`datasets.Dataset` of `{"prompt", "record_index"}` rows, the same prompts as `cot` mode."""
    from datasets import Dataset

    from lrt.data.prompts import format_prompt

    rows = [
        {
            "prompt": cot_prompt(
                format_prompt(tokenizer, r, prompt, system), think_open, tokenizer
            ),
            "record_index": i,
        }
        for i, r in enumerate(records)
    ]
    return Dataset.from_list(rows)


# --- TRL configuration -----------------------------------------------------------------------

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


def report_targets(logger_cfg: Mapping[str, Any] | None) -> list[str]:
    """TRL `report_to` from the chosen lrt loggers (csv is ours, so it maps to nothing)."""
    return [REPORT_TO[name] for name in (logger_cfg or {}) if name in REPORT_TO]


def trl_config(
    settings: GRPOCoTSettings,
    output_dir: Path,
    seed: int,
    report_to: Sequence[str],
    run_name: str,
    world_size: int = 1,
    progress_bar: bool = True,
) -> Any:
    """TRL's `GRPOConfig` from our settings.

    TRL counts batches in completions: an optimiser step takes `per_device_train_batch_size x
    gradient_accumulation_steps x world_size` of them, which must be `batch_size` questions x
    `num_generations`; `micro_batch_size` completions go through each forward/backward pass.
    """
    import torch
    from trl import GRPOConfig

    micro = settings.micro_batch_size or settings.completions_per_step
    if settings.completions_per_step % (micro * world_size):
        raise ConfigError(
            f"stage.batch_size x stage.num_generations = {settings.completions_per_step} "
            f"completions per step must split into stage.micro_batch_size={micro} on each of "
            f"{world_size} processes"
        )
    return GRPOConfig(
        output_dir=str(output_dir),
        run_name=run_name,
        max_steps=settings.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=settings.completions_per_step // (micro * world_size),
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        beta=settings.beta,
        loss_type=settings.loss_type,
        scale_rewards=settings.scale_rewards,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon_high,
        num_iterations=settings.num_iterations,
        mask_truncated_completions=settings.mask_truncated_completions,
        **{_checkpointing_field(GRPOConfig): settings.gradient_checkpointing},
        bf16=settings.bf16,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        log_completions=settings.log_completions,
        report_to=list(report_to) or "none",
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress_bar,
        remove_unused_columns=False,  # the reward needs record_index
        **settings.trl,
    )


def _checkpointing_field(config_cls: type) -> str:
    """transformers 5.x renamed `gradient_checkpointing` to `activation_checkpointing` (the old
    name warns); use whichever this version has."""
    new = "activation_checkpointing"
    return new if new in {f.name for f in fields(config_cls)} else "gradient_checkpointing"


def lora_config(lora: LoraSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


# --- callbacks -------------------------------------------------------------------------------


def _callbacks(metrics_csv: Path, base_model: str, meta: Mapping[str, Any]) -> list[Any]:
    """TrainerCallbacks, built here so `transformers` is imported only when training."""
    from transformers import TrainerCallback

    class MetricsCSV(TrainerCallback):
        """Every dict TRL logs, as a row of `<run>/logs/metrics.csv` (the csv logger's file).

        A resumed run keeps the rows up to its checkpoint's step and drops any later ones that
        the interrupted run logged after its last checkpoint.
        """

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if metrics_csv.is_file() and state.global_step > 0:
                with metrics_csv.open(newline="") as f:
                    self.rows = [
                        r for r in csv.DictReader(f) if int(r["step"]) <= state.global_step
                    ]

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any
        ) -> None:
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": state.epoch}
            row |= {k: v for k, v in logs.items() if isinstance(v, int | float | str)}
            self.rows.append(row)
            columns = list(dict.fromkeys(k for r in self.rows for k in r))
            metrics_csv.parent.mkdir(parents=True, exist_ok=True)
            tmp = metrics_csv.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, columns)
                writer.writeheader()
                writer.writerows(self.rows)
            os.replace(tmp, metrics_csv)

    class AdapterMeta(TrainerCallback):
        """`lrt_adapter.json` in every TRL checkpoint, so each is an adapter evaluate.py takes
        and a resume can check the base model."""

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            from lrt.adapter import write_meta

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                write_meta(folder, base_model, step=state.global_step, **meta)

    return [MetricsCSV(), AdapterMeta()]


# --- the stage -------------------------------------------------------------------------------


def resume_checkpoint(cfg: DictConfig, ckpt_dir: Path, base_model: str) -> str | None:
    """`ckpt_path`, else the newest `checkpoint-N` in the run folder; refused for another base."""
    from transformers.trainer_utils import get_last_checkpoint

    from lrt.adapter import check_base, is_adapter

    path = cfg.get("ckpt_path") or (get_last_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None)
    if path is None:
        return None
    if not is_adapter(Path(path)):
        raise CheckpointError(f"{path} is not a TRL checkpoint of LoRA adapters")
    check_base(Path(path), base_model)
    return str(path)


def train_grpo_cot(cfg: DictConfig, run_dir: Path) -> Path:
    """Run `stage=grpo_cot`: LoRA-GRPO on explicit CoT, adapter export, held-out comparison."""
    import lightning as L
    from trl import GRPOTrainer

    from lrt.adapter import write_meta
    from lrt.build import backbone_from
    from lrt.data.datamodule import PromptLimit, load_limited_split
    from lrt.data.prompts import PromptConfig

    stage = OmegaConf.to_container(cfg.stage, resolve=True)
    settings = grpo_cot_settings(stage)
    ckpt_dir = run_dir / "checkpoints"
    resume = resume_checkpoint(cfg, ckpt_dir, cfg.model.name)
    L.seed_everything(cfg.seed, workers=True)
    backbone = backbone_from(cfg)
    tokenizer = backbone.tokenizer
    prompt = PromptConfig(**dict(cfg.data.prompt))
    context = getattr(backbone.model.config, "max_position_embeddings", None)
    budget = None if context is None else context - settings.max_completion_length
    if budget is not None and budget < 1:
        raise ConfigError(
            f"the model's context of {context} tokens cannot hold "
            f"stage.thinking_budget + stage.max_answer_tokens = {settings.max_completion_length}"
        )
    limit = PromptLimit.from_config(cfg.data, budget)
    system = backbone.config.system_prompt

    def split(key: str) -> list[Record]:
        return load_limited_split(cfg.data, key, limit, tokenizer, prompt, system)

    records = split("train")
    dataset = build_dataset(records, tokenizer, prompt, system, backbone.config.think_open)
    log.info("grpo_cot: %d training prompts, e.g. %r", len(records), dataset[0]["prompt"])

    report_to = report_targets(cfg.get("logger"))
    if "wandb" in report_to:
        from lrt.loggers import wandb_run_id, wandb_should_be_offline

        wandb_node = cfg.logger.wandb
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_PROJECT", str(wandb_node.get("project") or "lrt"))
        os.environ["WANDB_RUN_ID"] = wandb_run_id(run_dir)  # a resume continues the same run
        os.environ["WANDB_RESUME"] = "allow"
        if wandb_node.get("entity"):
            os.environ.setdefault("WANDB_ENTITY", str(wandb_node.entity))
        if wandb_should_be_offline():
            os.environ["WANDB_MODE"] = "offline"
    if "tensorboard" in report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))

    args = trl_config(
        settings,
        ckpt_dir,
        cfg.seed,
        report_to,
        run_name=str(cfg.get("run_name") or run_dir.name),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        progress_bar=bool(cfg.get("trainer", {}).get("enable_progress_bar", True)),
    )
    meta = {
        "base_config": asdict(backbone.config),
        "task": cfg.data.task,
        "think_open": backbone.config.think_open,
        "think_close": backbone.config.think_close,
        "thinking_budget": settings.thinking_budget,
        "length_penalty": settings.reward.length_penalty,
    }
    funcs = reward_functions(
        cfg.data.task, records, settings.reward, settings.max_completion_length
    )
    backbone.model.train()  # load_backbone freezes and sets eval; peft adds the trainable part
    trainer = GRPOTrainer(
        model=backbone.model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings.lora),
        callbacks=_callbacks(run_dir / "logs" / "metrics.csv", backbone.name, meta),
    )
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)

    final = run_dir / "adapter" / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        write_meta(final, backbone.name, step=trainer.state.global_step, **meta)
        log.info("adapter saved to %s", final)
        if cfg.final_eval.enabled:
            final_comparison(cfg, settings, trainer.model, backbone, split("test"), run_dir)
    return run_dir


def final_comparison(
    cfg: DictConfig,
    settings: GRPOCoTSettings,
    peft_model: Any,
    backbone: Any,
    records: list[Record],
    run_dir: Path,
) -> list[dict]:
    """Base and base+adapter on the same held-out questions in `stage.eval_modes` (`cot` at the
    training thinking budget), decoded by lrt's own decoder like evaluate.py's rows."""
    from lrt.data.prompts import PromptConfig
    from lrt.evaluation import DecodeConfig, mode_rows, parse_mode
    from lrt.latent_lm import LatentLM
    from lrt.report import print_table

    prompt = PromptConfig(**dict(cfg.data.prompt))
    decode = DecodeConfig(max_answer_tokens=settings.max_answer_tokens)
    modes = [
        f"{m}@{settings.thinking_budget}" if parse_mode(m) == ("cot", None) else m
        for m in settings.eval_modes
    ]
    peft_model.eval()
    lm = LatentLM(backbone)  # backbone.model now carries the LoRA layers peft injected

    def rows(label: str) -> list[dict]:
        table = mode_rows(
            lm, cfg.data.task, records, prompt, modes, decode, cfg.final_eval.batch_size, cfg.seed
        )
        return [{"checkpoint": label, **row} for row in table]

    table = []
    if settings.compare_base:
        with peft_model.disable_adapter():
            table += rows("base")
    table += rows(f"adapter:{run_dir.name}/final")
    print_table(
        f"held-out {cfg.data.task} ({cfg.data.test.split})", table, path=run_dir / "final_eval.md"
    )
    return table
