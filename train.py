"""Train a reasoner: `python train.py [stage=sft|grpo] [model=...] [data=...] [key=value ...]`.

`stage=grpo_cot` trains the token-space baseline instead (LoRA adapters of the base, with TRL;
see `lrt/training/grpo_cot.py`).

Builds the frozen backbone, the reasoner, the DataModule and the stage's LightningModule from
the Hydra config, trains with a Lightning Trainer (checkpoints in `<run>/checkpoints`, resumed
automatically from `last.ckpt`), exports the reasoner to `<run>/reasoner/{best,final}` and
ends with a held-out comparison of `lrt` against `nothink` on the same questions.

A run killed at any point and resumed with `python train.py resume=<run folder>` (or the same
`run_name=`) continues from its last checkpoint and ends as the uninterrupted run would;
SIGTERM or Ctrl+C first write one, and every stop prints the resume command. Bad input stops
it with one line, `error: <message>`, and exit status 1.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lrt.build import backbone_from, load_reasoner, new_reasoner, read_checkpoint
from lrt.config import validate_train
from lrt.data.datamodule import LRTDataModule, load_limited_split
from lrt.data.prompts import PromptConfig
from lrt.errors import CheckpointError, ConfigError, LrtError
from lrt.evaluation import DecodeConfig, mode_rows
from lrt.latent_lm import LatentLM
from lrt.loggers import build_loggers
from lrt.report import print_table
from lrt.training.callbacks import (
    AtomicCheckpointIO,
    KeepMetricsOnResume,
    PeriodicCheckpoint,
    RankConsistencyCheck,
    ReasonerExport,
    StopOnSignal,
)
from lrt.training.optim import OptimConfig
from lrt.training.sft import SFTModule

log = logging.getLogger("lrt.train")


class Stopped(Exception):
    """Training stopped by SIGTERM or Ctrl+C after writing its checkpoint."""

    def __init__(self, signum: signal.Signals, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir` (see `resume_argv`)."""
    return f"python train.py resume={run_dir}"


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


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir is None:
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
    return Path(cfg.run_dir)


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


def resume_path(cfg: DictConfig, ckpt_dir: Path) -> str | None:
    """`ckpt_path`, else the run folder's `last.ckpt`, checked before the model loads: readable,
    and for this base (the rest is checked as Lightning loads it)."""
    last = ckpt_dir / "last.ckpt"
    path = cfg.get("ckpt_path") or (str(last) if last.exists() else None)
    if path:
        trained_for = read_checkpoint(path)["lrt"]["base_model"]
        if trained_for != cfg.model.name:
            raise CheckpointError(
                f"{path}: checkpoint was trained for base model {trained_for!r}, "
                f"not {cfg.model.name!r}"
            )
    return path


def build_stage(cfg: DictConfig, lm: LatentLM):
    optim = OptimConfig.from_dict(dict(cfg.stage.optim))
    if cfg.stage.name == "sft":
        module = SFTModule(
            lm,
            cfg.data.task,
            optim,
            cfg.stage.max_steps,
            cfg.stage.val_max_answer_tokens,
            micro_batch_size=cfg.stage.get("micro_batch_size"),
            max_grad_norm=cfg.stage.get("max_grad_norm", 1.0),
        )
    else:
        from lrt.training.grpo import GRPOModule

        module = GRPOModule.from_config(lm, cfg, optim)
    module.configure_run(seed=cfg.seed, skip_nonfinite=cfg.guard.skip_nonfinite)
    return module


def prompt_budget(cfg: DictConfig, lm: LatentLM) -> int | None:
    """Prompt tokens the model's context leaves after the thinking span and the longest answer
    this run decodes (None when the model states no context length)."""
    context = getattr(lm.base.config, "max_position_embeddings", None)
    if context is None:
        return None
    span = lm.open_ids.numel() + lm.reasoner.num_latents + lm.close_ids.numel()
    answer = max(
        cfg.stage.val_max_answer_tokens,
        cfg.stage.get("max_answer_tokens", 0),
        cfg.final_eval.max_answer_tokens if cfg.final_eval.enabled else 0,
    )
    if context - span - answer < 1:
        raise ConfigError(
            f"the model's context of {context} tokens cannot hold the {span}-token thinking "
            f"span and {answer} answer tokens (reasoner.num_latents, *max_answer_tokens)"
        )
    return context - span - answer


def trainer_arguments(cfg: DictConfig) -> dict:
    """Trainer kwargs from `conf/trainer`, with `strategy: fsdp` as FSDP2 (see strategies.py)."""
    # The DataModule's batch sampler splits every global batch across ranks itself.
    kwargs = {**cfg.trainer, "use_distributed_sampler": False}
    if kwargs.get("strategy") == "fsdp":
        from lrt.training.strategies import ShardedDataParallel

        kwargs["strategy"] = ShardedDataParallel()
    return kwargs


def final_comparison(
    cfg: DictConfig, module, data: LRTDataModule, run_dir: Path, is_global_zero: bool
) -> list[dict]:
    """Accuracy and tokens of each mode on the same held-out questions: every rank decodes its
    shard (FSDP's forwards are collectives), rank 0 prints and writes the gathered table."""
    lm = module.lm
    prompt = PromptConfig(**dict(cfg.data.prompt))
    system = lm.backbone.config.system_prompt
    records = load_limited_split(cfg.data, "test", data.prompt_limit, lm.tokenizer, prompt, system)
    decode = DecodeConfig(max_answer_tokens=cfg.final_eval.max_answer_tokens)
    rows = mode_rows(
        lm,
        cfg.data.task,
        records,
        prompt,
        cfg.final_eval.modes,
        decode,
        cfg.final_eval.batch_size,
        cfg.seed,
        all_done=module.all_done,
    )
    if is_global_zero:
        title = f"held-out {cfg.data.task} ({cfg.data.test.split})"
        print_table(title, rows, path=run_dir / "final_eval.md")
    return rows


def train(cfg: DictConfig) -> Path:
    """Run one training job; returns its run folder."""
    validate_train(cfg)
    run_dir = resolve_run_dir(cfg)
    check_run_dir(run_dir, cfg.guard.min_free_gb)
    try:
        if cfg.stage.name == "grpo_cot":  # token-space baseline: TRL trains LoRA adapters
            from lrt.training.grpo_cot import train_grpo_cot

            return train_grpo_cot(cfg, run_dir)
        return _train_in(cfg, run_dir)
    except Exception as err:
        if not isinstance(err, Stopped | ConfigError):
            err.run_dir = run_dir  # main() prints the command that resumes it
        raise


def _train_in(cfg: DictConfig, run_dir: Path) -> Path:
    """`train` once the run folder exists: from here a failure can be resumed."""
    ckpt_dir = run_dir / "checkpoints"
    resume = resume_path(cfg, ckpt_dir)
    L.seed_everything(cfg.seed, workers=True)
    backbone = backbone_from(cfg)
    init = cfg.get("init_from")
    reasoner = load_reasoner(init, backbone) if init else new_reasoner(cfg, backbone)
    lm = LatentLM(backbone, reasoner)
    data = LRTDataModule(
        cfg.data,
        backbone.tokenizer,
        backbone.config.system_prompt,
        cfg.stage.batch_size,
        seed=cfg.seed,
        prompt_budget=prompt_budget(cfg, lm),
    )
    module = build_stage(cfg, lm)
    stopper = StopOnSignal(ckpt_dir / "last.ckpt")
    loggers = build_loggers(cfg.get("logger"), str(run_dir))
    # ReasonerExport before PeriodicCheckpoint: a checkpoint after validation holds its "best".
    callbacks = [
        ReasonerExport(run_dir / "reasoner"),
        PeriodicCheckpoint(ckpt_dir / "last.ckpt", cfg.stage.checkpoint_every_n_steps),
        RankConsistencyCheck(),
        stopper,
        KeepMetricsOnResume(loggers),
    ]
    trainer_kwargs = trainer_arguments(cfg)
    # After KeepMetricsOnResume has read metrics.csv: the CSV logger's first write replaces it.
    for logger in loggers:  # the resolved config travels with the run (wandb, hparams.yaml)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = L.Trainer(
        max_steps=cfg.stage.max_steps,
        # Lightning counts validation intervals in batches; GRPO takes num_iterations steps each.
        val_check_interval=cfg.stage.val_every_n_steps // cfg.stage.get("num_iterations", 1),
        check_val_every_n_epoch=None,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,  # PeriodicCheckpoint writes them
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        **trainer_kwargs,
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
    if stopper.received is not None and cfg.final_eval.enabled:  # came in the last batch
        raise Stopped(
            stopper.received,
            f"{stopper.received.name} after the last step; for the final evaluation run: "
            f"{resume_command(run_dir)}",
        )
    if cfg.final_eval.enabled:
        final_comparison(cfg, module, data, run_dir, trainer.is_global_zero)
    return run_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except LrtError as err:
        hint = getattr(err, "run_dir", None)
        message = f"{err}; resume with: {resume_command(hint)}" if hint else str(err)
        log.error("%s", message)
        sys.exit(f"error: {message}")
    except Stopped as stop:
        log.warning("%s", stop)
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except Exception as err:  # a crash: the traceback follows, and how to continue
        if getattr(err, "run_dir", None):
            print(f"crashed; resume with: {resume_command(err.run_dir)}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *resume_argv(sys.argv[1:])]
    main()
