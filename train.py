"""Train a reasoner: `python train.py [stage=sft|grpo] [model=...] [data=...] [key=value ...]`.

Builds the frozen backbone, the reasoner, the DataModule and the stage's LightningModule from
the Hydra config, trains with a Lightning Trainer (checkpoints in `<run>/checkpoints`, resumed
automatically from `last.ckpt`), exports the reasoner to `<run>/reasoner/{best,final}` and
ends with a held-out comparison of `lrt` against `nothink` on the same questions.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, open_dict

from lrt.build import backbone_from, load_reasoner, new_reasoner
from lrt.config import validate_train
from lrt.data.datamodule import LRTDataModule, load_split, split_config
from lrt.data.prompts import PromptConfig
from lrt.errors import LrtError
from lrt.evaluation import DecodeConfig, accuracy, mean_tokens, predict
from lrt.latent_lm import LatentLM
from lrt.loggers import build_loggers
from lrt.report import print_table
from lrt.training.callbacks import RankConsistencyCheck, ReasonerExport
from lrt.training.optim import OptimConfig
from lrt.training.sft import SFTModule

log = logging.getLogger("lrt.train")


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir is None:
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
    return Path(cfg.run_dir)


def build_stage(cfg: DictConfig, lm: LatentLM):
    optim = OptimConfig.from_dict(dict(cfg.stage.optim))
    if cfg.stage.name == "sft":
        return SFTModule(
            lm, cfg.data.task, optim, cfg.stage.max_steps, cfg.stage.val_max_answer_tokens
        )
    from lrt.training.grpo import GRPOModule

    return GRPOModule.from_config(lm, cfg, optim)


def trainer_arguments(cfg: DictConfig, module, lm: LatentLM) -> dict:
    """Trainer kwargs from `conf/trainer`, with the FSDP strategy built for this model."""
    # The DataModule's batch sampler splits every step across ranks itself.
    kwargs = {**cfg.trainer, "use_distributed_sampler": False}
    if not module.automatic_optimization:  # the module clips its own gradients
        kwargs.pop("gradient_clip_val", None)
    if kwargs.get("strategy") == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from lrt.reasoner import ReasonerBlock

        layer = type(lm.base.get_decoder().layers[0])
        kwargs["strategy"] = FSDPStrategy(
            auto_wrap_policy={layer, ReasonerBlock}, use_orig_params=True
        )
    return kwargs


def final_comparison(cfg: DictConfig, lm: LatentLM, run_dir: Path) -> list[dict]:
    """Accuracy and tokens of each mode on the same held-out questions."""
    records = load_split(
        cfg.data.task,
        split_config(cfg.data.test, "test"),
        cfg.data.on_error,
        dict(cfg.data.get("options") or {}),
    )
    prompt = PromptConfig(**dict(cfg.data.prompt))
    decode = DecodeConfig(max_answer_tokens=cfg.final_eval.max_answer_tokens)
    rows = []
    for mode in cfg.final_eval.modes:
        preds = predict(
            lm,
            cfg.data.task,
            records,
            prompt,
            mode,
            decode,
            batch_size=cfg.final_eval.batch_size,
            seed=cfg.seed,
        )
        rows.append(
            {
                "mode": mode,
                "questions": len(preds),
                "accuracy": accuracy(preds),
                "mean_tokens": mean_tokens(preds),
            }
        )
    print_table(
        f"held-out {cfg.data.task} ({cfg.data.test.split})", rows, path=run_dir / "final_eval.md"
    )
    return rows


def train(cfg: DictConfig) -> Path:
    """Run one training job; returns its run folder."""
    validate_train(cfg)
    run_dir = resolve_run_dir(cfg)
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
    )
    module = build_stage(cfg, lm)
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            every_n_train_steps=cfg.stage.checkpoint_every_n_steps,
            save_last=True,
            save_top_k=0,
        ),
        ReasonerExport(run_dir / "reasoner"),
        RankConsistencyCheck(),
    ]
    trainer_kwargs = trainer_arguments(cfg, module, lm)
    trainer = L.Trainer(
        max_steps=cfg.stage.max_steps,
        # Lightning counts validation intervals in batches; GRPO takes num_iterations steps each.
        val_check_interval=cfg.stage.val_every_n_steps // cfg.stage.get("num_iterations", 1),
        check_val_every_n_epoch=None,
        logger=build_loggers(cfg.get("logger"), str(run_dir)),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        **trainer_kwargs,
    )
    resume = cfg.get("ckpt_path") or (
        str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").exists() else None
    )
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    if cfg.final_eval.enabled and trainer.is_global_zero:
        final_comparison(cfg, lm, run_dir)
    return run_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except LrtError as err:
        log.error("%s", err)
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
