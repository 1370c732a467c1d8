"""The library side of `train.py`: validate, pick the stage, build, fit, report.

`run(cfg)` turns a `train.yaml` composition into typed settings (one call, before any model
loads), makes the run folder, and hands it to the stage's runner (`lrt.stages`). The reasoner
stages share `train_reasoner`: frozen backbone, reasoner, DataModule, the stage's
LightningModule, a Lightning Trainer with checkpoints every `checkpoint_every_n_steps`, the
reasoner exported to `<run>/reasoner/{best,final}` and a held-out table at the end.

A run killed at any point and resumed with `python train.py resume=<run folder>` (or the same
`run_name=`) continues from its last checkpoint and ends as the uninterrupted run would.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lrt.backbone import Backbone, load_backbone
from lrt.config import RENAMED, TrainConfig, validate_train
from lrt.console import RunProgressBar, model_summary, quiet_libraries
from lrt.data.datamodule import LRTDataModule
from lrt.data.loading import load_limited_split
from lrt.errors import CheckpointError, ConfigError, DataError
from lrt.evaluation.predict import mode_rows
from lrt.evaluation.prediction import Prediction
from lrt.lm.latent_lm import LatentLM
from lrt.loggers import build_loggers
from lrt.modes import DecodeConfig, parse_mode, with_controls
from lrt.plots import grpo_curves, train_curves
from lrt.reasoner import Reasoner, ReasonerConfig, build_reasoner, load_reasoner
from lrt.report import by_steps_rows, held_out_rows, print_table
from lrt.stages import get_stage
from lrt.training.base import StageModule
from lrt.training.callbacks import (
    AtomicCheckpointIO,
    EndWithLogAndValidation,
    KeepMetricsOnResume,
    PeriodicCheckpoint,
    RankConsistencyCheck,
    ReasonerExport,
    StopOnSignal,
)
from lrt.training.runs import Stopped, resume_command, resume_path, trainer_arguments

log = logging.getLogger("lrt.train")


def resume_argv(argv: list[str]) -> list[str]:
    """`resume=<run folder>` on the command line: the run's own overrides (its
    `.hydra/overrides.yaml`), then any others given now, in that run folder.

    Re-composing from the saved overrides, rather than loading the saved config, keeps the
    run's `.hydra` record and the resumed run's composition identical; later overrides win, so
    `resume=<run> stage.max_steps=400` trains on for longer.
    """
    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    if "-m" in argv or "--multirun" in argv:
        sys.exit("error: resume= continues one run; resume each job of a sweep by its folder")
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        sys.exit(f"error: resume={run_dir}: {saved} does not exist, so it is not a train.py run")
    overrides: dict[str, str] = {}
    for item in [*map(str, OmegaConf.load(saved)), *(a for a in argv if a not in given)]:
        overrides[item.split("=", 1)[0].lstrip("+~")] = item
    overrides.pop("run_name", None)
    return [*overrides.values(), f"run_name={run_dir.name}", f"hydra.run.dir={run_dir}"]


def refuse_renamed(argv: list[str]) -> None:
    """An override of a key that was renamed stops with the new name (Hydra alone would only
    say the old key is not in the config)."""
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in RENAMED:
            sys.exit(f"error: {key} is now {RENAMED[key]}")


def check_run_dir(run_dir: Path, min_free_gb: float) -> None:
    """A run folder that cannot take a checkpoint fails now, not at the first save hours later."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ConfigError(f"run folder {run_dir} is not writable: {err.strerror}") from err
    free_gb = shutil.disk_usage(run_dir).free / 2**30
    if free_gb < min_free_gb:
        raise ConfigError(
            f"run folder {run_dir} has {free_gb:.2f} GiB free, less than "
            f"guard.min_free_gb={min_free_gb}"
        )


def run(cfg: DictConfig) -> Path:
    """Run one training job from its composed config; returns its run folder."""
    quiet_libraries()
    config = validate_train(cfg)
    if config.run_dir is None:
        config.run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(config.run_dir)
    check_run_dir(run_dir, config.guard.min_free_gb)
    hyperparams = OmegaConf.to_container(cfg, resolve=True)
    try:
        return get_stage(config.stage.name).run(config, run_dir, hyperparams)
    except Exception as err:
        # A guard stop or a crash can be resumed: the entry point prints the command. Bad
        # input (config, data, checkpoint) cannot: resuming would fail the same way.
        if not isinstance(err, Stopped | ConfigError | DataError | CheckpointError):
            err.run_dir = run_dir
        raise


# --- the reasoner stages -------------------------------------------------------------------


def starting_reasoner(config: TrainConfig, backbone: Backbone) -> Reasoner:
    """The reasoner a run starts from: `init_from` (a folder or checkpoint), else a new one."""
    if config.init_from:
        return load_reasoner(config.init_from, backbone.name, backbone.hidden_size)
    return build_reasoner(
        config.reasoner,
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
        base=backbone.model,
        base_config=asdict(backbone.config),
    )


def prompt_budget(config: TrainConfig, lm: LatentLM) -> int | None:
    """Prompt tokens the model's context leaves after the thinking span and the longest answer
    this run decodes (None when the model states no context length)."""
    context = getattr(lm.base.config, "max_position_embeddings", None)
    if context is None:
        return None
    span = lm.span_positions("lrt")
    final = config.final_eval
    budgets = [config.data.max_answer_tokens, getattr(config.stage, "max_answer_tokens", 0)]
    budgets += [parse_mode(m)[1] or 0 for m in final.modes] if final.enabled else []
    answer = max(budgets[:2]) + max(budgets[2:], default=0)
    if context - span - answer < 1:
        raise ConfigError(
            f"the model's context of {context} tokens cannot hold the {span}-token thinking "
            f"span and {answer} answer tokens (reasoner.num_latents, *max_answer_tokens)"
        )
    return context - span - answer


def run_summary(config: TrainConfig, reasoner: ReasonerConfig, run_dir: Path) -> str:
    """The run in one line: stage, task and target, base, network (the one loaded: with
    `init_from`, the saved one's, not `config.reasoner`'s), steps and batch, folder."""
    stage, data = config.stage, config.data
    start = f" from {config.init_from}" if config.init_from else ""
    target = get_stage(stage.name).target or data.prompt.target
    return (
        f"{stage.name}{start} on {data.task} (target: {target}), base "
        f"{config.model.name}, reasoner {reasoner.arch} K={reasoner.num_latents}; "
        f"{stage.max_steps} steps of {stage.batch_size}, lr {stage.optim.lr:g}; "
        f"run folder {run_dir}"
    )


def budget_note(config: TrainConfig) -> str | None:
    """A line naming both answer budgets when the rollouts decode at another budget than
    validation (which chooses `reasoner/best`) and the final table: the config then says so
    explicitly (`stage.max_answer_tokens`), and the run should say it too."""
    rollouts = getattr(config.stage, "max_answer_tokens", None)
    scored = config.data.max_answer_tokens
    if rollouts is None or rollouts == scored:
        return None
    return (
        f"answer budgets differ: the rollouts decode up to {rollouts} answer tokens "
        f"(stage.max_answer_tokens), validation, reasoner/best and the final table up to "
        f"{scored} (data.max_answer_tokens)"
    )


def final_comparison(
    config: TrainConfig, module: StageModule, data: LRTDataModule, run_dir: Path, zero: bool
) -> list[dict]:
    """Accuracy and tokens of each mode on the same held-out questions: every rank decodes its
    shard (FSDP's forwards are collectives), rank 0 prints and writes the gathered table."""
    lm = module.lm
    prompt, system = config.data.prompt, lm.backbone.config.system_prompt
    records = load_limited_split(
        config.data, "test", data.prompt_limit, lm.tokenizer, prompt, system
    )
    final = config.final_eval
    answers: list[Prediction] = []
    rows = mode_rows(
        lm,
        config.data.task,
        records,
        prompt,
        with_controls(final.modes, final.blind),
        DecodeConfig(max_answer_tokens=config.data.max_answer_tokens),
        final.batch_size,
        config.seed,
        all_done=module.all_done,
        keep=answers,
    )
    if zero:
        assert config.data.test is not None
        title = f"held-out {config.data.task} ({config.data.test.split})"
        print_table(title, held_out_rows(rows), path=run_dir / "final_eval.md")
        if steps := by_steps_rows(rows):
            print_table(f"{title}, by solution steps", steps, path=run_dir / "final_eval_steps.md")
        (run_dir / "final_eval.json").write_text(json.dumps(rows, indent=2) + "\n")
        # As evaluate.py writes them (checkpoint "final"), so `paired` and pooled tests over
        # seeds can compare runs question by question without decoding again.
        with (run_dir / "final_eval_predictions.jsonl").open("w") as f:
            f.writelines(json.dumps(p.row("final", config.data.task)) + "\n" for p in answers)
    return rows


def train_reasoner(config: TrainConfig, run_dir: Path, hyperparams: dict) -> Path:
    """Train a reasoner with the stage's LightningModule (SFT, GRPO)."""
    ckpt_dir = run_dir / "checkpoints"
    resume = resume_path(config, ckpt_dir)
    L.seed_everything(config.seed, workers=True, verbose=False)
    backbone = load_backbone(config.model)
    lm = LatentLM(backbone, starting_reasoner(config, backbone))
    log.info("%s", run_summary(config, lm.reasoner.config, run_dir))
    if note := budget_note(config):
        log.warning("%s", note)
    log.info("%s", model_summary(backbone.model, lm.reasoner, backbone.name))
    data_settings = config.data
    stage = get_stage(config.stage.name)
    if stage.target is not None:
        prompt = replace(data_settings.prompt, target=stage.target)
        data_settings = replace(data_settings, prompt=prompt)
    if config.stage.val_limit is not None:
        data_settings = replace(
            data_settings, val=replace(data_settings.val, limit=config.stage.val_limit)
        )
    data = LRTDataModule(
        data_settings,
        backbone.tokenizer,
        backbone.config.system_prompt,
        config.stage.batch_size,
        seed=config.seed,
        prompt_budget=prompt_budget(config, lm),
        val_batch_size=config.stage.val_batch_size,
    )
    module_class = stage.lightning_module
    module = module_class(
        lm,
        config.data.task,
        config.stage,
        seed=config.seed,
        skip_nonfinite=config.guard.skip_nonfinite,
        answer_tokens=config.data.max_answer_tokens,
    )
    stopper = StopOnSignal(ckpt_dir / "last.ckpt")
    loggers = build_loggers(config.logger, str(run_dir))
    # ReasonerExport before PeriodicCheckpoint: a checkpoint after validation holds its "best".
    callbacks = [
        ReasonerExport(run_dir / "reasoner"),
        PeriodicCheckpoint(ckpt_dir / "last.ckpt", config.stage.checkpoint_every_n_steps),
        RankConsistencyCheck(),
        stopper,
        KeepMetricsOnResume(loggers),
        EndWithLogAndValidation(),
    ]
    if config.trainer.get("enable_progress_bar", True):
        callbacks.append(RunProgressBar(config.stage.name))
    # After KeepMetricsOnResume has read metrics.csv: the CSV logger's first write replaces it.
    for logger in loggers:  # the resolved config travels with the run (wandb, hparams.yaml)
        logger.log_hyperparams(hyperparams)
    trainer = L.Trainer(
        max_steps=config.stage.max_steps,
        # Lightning counts validation intervals in batches; GRPO takes num_iterations steps each.
        val_check_interval=config.stage.val_every_n_steps // config.stage.steps_per_batch,
        check_val_every_n_epoch=None,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,  # PeriodicCheckpoint writes them
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,  # model_summary's line above says what trains
        **trainer_arguments(config),
    )
    if resume:
        log.info("resuming from %s", resume)
    elif config.stage.val_at_start:
        trainer.validate(module, datamodule=data, verbose=False)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    except SIGTERMException:
        assert stopper.received is not None
        raise Stopped(
            stopper.received,
            f"{stopper.received.name} at step {trainer.global_step}: {stopper.checkpoint} "
            f"written; resume with: {resume_command(run_dir)}",
        ) from None
    tabulate = config.final_eval.enabled and stage.target is None
    if stopper.received is not None and tabulate:  # came in the last batch
        raise Stopped(
            stopper.received,
            f"{stopper.received.name} after the last step; for the final evaluation run: "
            f"{resume_command(run_dir)}",
        )
    if trainer.is_global_zero:
        plot_curves(run_dir, config.stage.name)
    if tabulate:
        final_comparison(config, module, data, run_dir, trainer.is_global_zero)
    return run_dir


def plot_curves(run_dir: Path, stage: str) -> None:
    """`<run>/train_curves.png` (and GRPO's `grpo_curves.png`) from the CSV log, once any step
    is logged (other loggers keep their own curves)."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    drawn = [train_curves(rows, run_dir / "train_curves.png")]
    if stage == "grpo":
        drawn.append(grpo_curves(rows, run_dir / "grpo_curves.png"))
    log.info("curves: %s", ", ".join(str(p) for p in drawn if p is not None))
