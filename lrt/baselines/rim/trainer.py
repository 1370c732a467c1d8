"""`train.py stage=rim`: the Lightning run of RiM, with every stage's resume, logs and stops.

Same machinery as the reasoner stages (`lrt.train.train_reasoner`): the DataModule and its
step-keyed sampler, `last.ckpt` every `checkpoint_every_n_steps` (exact resume), SIGTERM and
Ctrl+C handling, the CSV/wandb loggers and progress bar. What differs is what is trained and
exported: the base gets LoRA adapters and the block embeddings, and `<run>/adapter/{best,final}`
hold them as a peft adapter folder with its base-model check (`lrt_adapter.json`), which
`evaluate.py rim=<run>` loads. The held-out table at the end has the `rim` rows (evaluate.py
compares them with the base's modes, which this run's adapted model cannot answer for).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lrt.adapter import find_adapter
from lrt.backbone import load_backbone
from lrt.baselines.rim.lora import load_lora
from lrt.baselines.rim.memory import MemoryBlocks
from lrt.baselines.rim.model import MODE, RiMLM, build_rim, read_meta
from lrt.baselines.rim.module import RiMModule
from lrt.baselines.rim.settings import RiMSettings
from lrt.baselines.rim.steps import require_steps
from lrt.data.datamodule import LRTDataModule
from lrt.data.loading import load_limited_split
from lrt.errors import CheckpointError, ConfigError
from lrt.evaluation.predict import mode_rows
from lrt.loggers import build_loggers
from lrt.modes import DecodeConfig
from lrt.report import held_out_rows, print_table
from lrt.training.base import StageModule
from lrt.training.callbacks import (
    AtomicCheckpointIO,
    KeepMetricsOnResume,
    PeriodicCheckpoint,
    ReasonerExport,
    StopOnSignal,
)
from lrt.training.runs import Stopped, resume_command, resume_path, trainer_arguments

if TYPE_CHECKING:
    from lrt.config import TrainConfig

log = logging.getLogger(__name__)


class AdapterExport(ReasonerExport):
    """`<run>/adapter/best` when validation accuracy improves, `<run>/adapter/final` at the end."""

    def __init__(self, directory: Path, settings: RiMSettings) -> None:
        super().__init__(directory)
        self.settings = settings

    def _export(self, trainer: L.Trainer, pl_module: StageModule, name: str) -> None:
        if trainer.is_global_zero:
            pl_module.lm.save(self.directory / name, self.settings)


def start_from(lm: RiMLM, path: str, settings: RiMSettings) -> None:
    """`init_from=<run or adapter>`: the adapters and blocks a refinement run starts from."""
    folder = find_adapter(path)
    meta = read_meta(folder, lm.backbone.name)
    if meta["memory_tokens"] != settings.memory_tokens or meta["lora_r"] != settings.lora_r:
        raise CheckpointError(
            f"init_from={path} has memory_tokens={meta['memory_tokens']} and lora_r="
            f"{meta['lora_r']}, but stage sets {settings.memory_tokens} and {settings.lora_r}"
        )
    load_lora(lm.base, folder)
    loaded = MemoryBlocks.load(folder, settings.memory_tokens, lm.backbone.hidden_size)
    lm.memory.embeddings.data.copy_(loaded.embeddings)
    log.info("starting from %s", folder)


def prompt_budget(lm: RiMLM, config: TrainConfig) -> int | None:
    """Prompt tokens the context leaves after the blocks and K answer-length readouts."""
    context = getattr(lm.base.config, "max_position_embeddings", None)
    if context is None:
        return None
    s: RiMSettings = config.stage
    rest = s.num_blocks * (s.block_size + config.data.max_answer_tokens + 1)
    if context - rest < 1:
        raise ConfigError(
            f"the model's context of {context} tokens cannot hold {s.num_blocks} blocks of "
            f"{s.block_size} and their readouts (stage.num_blocks, data.max_answer_tokens)"
        )
    return context - rest


def final_rows(config: TrainConfig, module: RiMModule, data: LRTDataModule, run_dir: Path) -> None:
    """The `rim` rows on `data.test`, as `final_eval.md` / `final_eval.json`."""
    lm = module.lm
    prompt, system = config.data.prompt, lm.backbone.config.system_prompt
    records = load_limited_split(
        config.data, "test", data.prompt_limit, lm.tokenizer, prompt, system
    )
    rows = mode_rows(
        lm,
        config.data.task,
        records,
        prompt,
        [MODE],
        DecodeConfig(max_answer_tokens=config.data.max_answer_tokens),
        config.final_eval.batch_size,
        config.seed,
        all_done=module.all_done,
    )
    if module.trainer.is_global_zero:
        assert config.data.test is not None
        title = f"held-out {config.data.task} ({config.data.test.split})"
        print_table(title, held_out_rows(rows), path=run_dir / "final_eval.md")
        (run_dir / "final_eval.json").write_text(json.dumps(rows, indent=2) + "\n")


def train_rim(config: TrainConfig, run_dir: Path, hyperparams: dict) -> Path:
    """Train RiM's adapters and blocks (grounding, refinement, or both in turn)."""
    settings: RiMSettings = config.stage
    ckpt_dir = run_dir / "checkpoints"
    resume = resume_path(config, ckpt_dir)
    L.seed_everything(config.seed, workers=True)
    backbone = load_backbone(config.model)
    lm = build_rim(backbone, settings)
    if config.init_from and not resume:
        start_from(lm, config.init_from, settings)
    data = LRTDataModule(
        config.data,
        backbone.tokenizer,
        backbone.config.system_prompt,
        settings.batch_size,
        seed=config.seed,
        prompt_budget=prompt_budget(lm, config),
        val_batch_size=settings.val_batch_size,
    )
    data.setup()
    if settings.phase != "refinement":
        require_steps(data.train_records, f"data.train (task {config.data.task})")
    module = RiMModule(
        lm,
        config.data.task,
        settings,
        seed=config.seed,
        skip_nonfinite=config.guard.skip_nonfinite,
        answer_tokens=config.data.max_answer_tokens,
    )
    stopper = StopOnSignal(ckpt_dir / "last.ckpt")
    loggers = build_loggers(config.logger, str(run_dir))
    callbacks = [
        AdapterExport(run_dir / "adapter", settings),
        PeriodicCheckpoint(ckpt_dir / "last.ckpt", settings.checkpoint_every_n_steps),
        stopper,
        KeepMetricsOnResume(loggers),
    ]
    for logger in loggers:
        logger.log_hyperparams(hyperparams)
    trainer = L.Trainer(
        max_steps=settings.max_steps,
        val_check_interval=settings.val_every_n_steps,
        check_val_every_n_epoch=None,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        **trainer_arguments(config),
    )
    if resume:
        log.info("resuming from %s", resume)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    except SIGTERMException:
        assert stopper.received is not None
        raise Stopped(
            stopper.received,
            f"{stopper.received.name} at step {trainer.global_step}: {stopper.checkpoint} "
            f"written; resume with: {resume_command(run_dir)}",
        ) from None
    if stopper.received is not None and config.final_eval.enabled:
        raise Stopped(
            stopper.received,
            f"{stopper.received.name} after the last step; for the final evaluation run: "
            f"{resume_command(run_dir)}",
        )
    if config.final_eval.enabled:
        final_rows(config, module, data, run_dir)
    return run_dir
