"""Token-space RL baseline (`stage=grpo_cot`): GRPO with TRL on LoRA adapters over explicit CoT.

The efficient-reasoning methods the LRT paper compares with train the model itself to think
(shorter) in tokens. This stage reproduces that family in our harness, so the same evaluation
table can hold base, base+LoRA-GRPO and base+LRT: TRL's `GRPOTrainer` does the RL (sampling,
advantages, clipped loss, optimiser, checkpoints, resume), peft adds the LoRA adapters, and
lrt supplies only what must match the rest of the framework:

- the prompts: the chat-templated task prompt followed by the model's `think_open` marker, the
  same text evaluate.py's `cot` mode decodes from, so before/after numbers are comparable;
- the reward: `lrt.grading.grade` as 1/0, plus an optional length term (`rewards.py`);
- the run folder (`outputs/grpo_cot/<task>/<run>`), its `logs/metrics.csv` and loggers;
- the exported adapter (`adapter/final` + `lrt_adapter.json`) that evaluate.py loads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from lrt.adapter import check_base, is_adapter, write_meta
from lrt.backbone import Backbone, load_backbone
from lrt.baselines.grpo_cot.callbacks import trainer_callbacks
from lrt.baselines.grpo_cot.rewards import reward_functions
from lrt.baselines.grpo_cot.settings import GRPOCoTSettings
from lrt.baselines.grpo_cot.trl_setup import build_dataset, lora_config, report_targets, trl_config
from lrt.data.loading import load_limited_split
from lrt.data.prompt_limit import PromptLimit
from lrt.data.records import Record
from lrt.errors import CheckpointError, ConfigError
from lrt.evaluation.predict import mode_rows
from lrt.lm.latent_lm import LatentLM
from lrt.loggers import wandb_run_id, wandb_should_be_offline
from lrt.modes import DecodeConfig, parse_mode
from lrt.report import held_out_rows, print_table

if TYPE_CHECKING:
    from lrt.config import TrainConfig

log = logging.getLogger(__name__)


def resume_checkpoint(path: str | None, ckpt_dir: Path, base_model: str) -> str | None:
    """`ckpt_path`, else the newest `checkpoint-N` in the run folder; refused for another base."""
    from transformers.trainer_utils import get_last_checkpoint

    path = path or (get_last_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None)
    if path is None:
        return None
    if not is_adapter(Path(path)):
        raise CheckpointError(f"{path} is not a TRL checkpoint of LoRA adapters")
    check_base(Path(path), base_model)
    return str(path)


def report_to_loggers(config: TrainConfig, run_dir: Path) -> list[str]:
    """TRL reports to wandb and TensorBoard itself; point them at this run (and its id)."""
    report_to = report_targets(config.logger)
    if "wandb" in report_to:
        wandb_node = (config.logger or {})["wandb"]
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_PROJECT", str(wandb_node.get("project") or "lrt"))
        os.environ["WANDB_RUN_ID"] = wandb_run_id(run_dir)  # a resume continues the same run
        os.environ["WANDB_RESUME"] = "allow"
        if wandb_node.get("entity"):
            os.environ.setdefault("WANDB_ENTITY", str(wandb_node["entity"]))
        if wandb_should_be_offline():
            os.environ["WANDB_MODE"] = "offline"
    if "tensorboard" in report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    return report_to


def train_grpo_cot(config: TrainConfig, run_dir: Path, hyperparams: dict) -> Path:
    """Run `stage=grpo_cot`: LoRA-GRPO on explicit CoT, adapter export, held-out comparison.

    TRL logs the run's settings itself (as `args`); `hyperparams`, the resolved config, is
    written beside them as `<run>/config.yaml`."""
    import lightning as L
    from trl import GRPOTrainer

    settings: GRPOCoTSettings = config.stage
    OmegaConf.save(OmegaConf.create(hyperparams), run_dir / "config.yaml")
    ckpt_dir = run_dir / "checkpoints"
    resume = resume_checkpoint(config.ckpt_path, ckpt_dir, config.model.name)
    L.seed_everything(config.seed, workers=True)
    backbone = load_backbone(config.model)
    tokenizer, prompt = backbone.tokenizer, config.data.prompt
    context = getattr(backbone.model.config, "max_position_embeddings", None)
    budget = None if context is None else context - settings.max_completion_length
    if budget is not None and budget < 1:
        raise ConfigError(
            f"the model's context of {context} tokens cannot hold "
            f"stage.thinking_budget + stage.max_answer_tokens = {settings.max_completion_length}"
        )
    limit = PromptLimit.from_config(config.data, budget)
    # Its rows are base-model modes (nothink, cot), which evaluation asks in the base's own
    # system line (`model.baseline_system_prompt`), as STIR mines: train in the prompt it is
    # read in.
    system = backbone.config.baseline_system_prompt

    def split(key: str) -> list[Record]:
        return load_limited_split(config.data, key, limit, tokenizer, prompt, system)

    records = split("train")
    dataset = build_dataset(records, tokenizer, prompt, system, backbone.config.think_open)
    log.info("grpo_cot: %d training prompts, e.g. %r", len(records), dataset[0]["prompt"])
    args = trl_config(
        settings,
        ckpt_dir,
        config.seed,
        report_to_loggers(config, run_dir),
        run_name=str(config.run_name or run_dir.name),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        progress_bar=bool(config.trainer.get("enable_progress_bar", True)),
    )
    meta = {
        "base_config": asdict(backbone.config),
        "task": config.data.task,
        "think_open": backbone.config.think_open,
        "think_close": backbone.config.think_close,
        "thinking_budget": settings.thinking_budget,
        "length_penalty": settings.reward.length_penalty,
    }
    funcs = reward_functions(
        config.data.task,
        records,
        settings.reward,
        settings.max_completion_length,
        backbone.config.think_close,
    )
    backbone.model.train()  # load_backbone freezes and sets eval; peft adds the trainable part
    trainer = GRPOTrainer(
        model=backbone.model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings.lora),
        callbacks=trainer_callbacks(run_dir / "logs" / "metrics.csv", backbone.name, meta),
    )
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)

    final = run_dir / "adapter" / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        write_meta(final, backbone.name, step=trainer.state.global_step, **meta)
        log.info("adapter saved to %s", final)
    if config.final_eval.enabled:  # every rank decodes its shard (mode_rows gathers)
        table = final_comparison(config, trainer.model, backbone, split("test"), run_dir.name)
        if trainer.is_world_process_zero():
            title = f"held-out {config.data.task} ({config.data.test.split})"
            shown = [
                {"checkpoint": r["checkpoint"], **shown}
                for r, shown in zip(table, held_out_rows(table), strict=True)
            ]
            print_table(title, shown, path=run_dir / "final_eval.md")
    return run_dir


def final_comparison(
    config: TrainConfig, peft_model: Any, backbone: Backbone, records: list[Record], run: str
) -> list[dict]:
    """Base and base+adapter on the same held-out questions in `stage.eval_modes` (`cot` at the
    training thinking budget), decoded by lrt's own decoder like evaluate.py's rows."""
    settings: GRPOCoTSettings = config.stage
    decode = DecodeConfig(max_answer_tokens=config.data.max_answer_tokens)
    modes = [
        f"{m}@{settings.thinking_budget}" if parse_mode(m) == ("cot", None) else m
        for m in settings.eval_modes
    ]
    peft_model.eval()
    lm = LatentLM(backbone)  # backbone.model now carries the LoRA layers peft injected

    def rows(label: str) -> list[dict]:
        batch = config.final_eval.batch_size
        table = mode_rows(
            lm, config.data.task, records, config.data.prompt, modes, decode, batch, config.seed
        )
        return [{"checkpoint": label, **row} for row in table]

    table = []
    if settings.compare_base:
        with peft_model.disable_adapter():
            table += rows("base")
    return table + rows(f"adapter:{run}/final")
