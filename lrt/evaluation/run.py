"""A whole evaluation from `conf/evaluate.yaml`: every (task, checkpoint, mode), measured and
written to the results folder (`results.json`, `predictions.jsonl`, `results.md`, plots).

`nothink` and `cot` never touch the reasoner, so they are evaluated once per task, under the
checkpoint label `base`; `lrt` and `hybrid` once per reasoner. LoRA adapters of the token-space
baseline (`adapter=`) change the base itself, so each gets the base-only modes again.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

import lrt
from lrt.backbone import backbone_config, load_backbone
from lrt.console import quiet_libraries
from lrt.data.loading import load_split
from lrt.data.settings import DataConfig
from lrt.errors import ConfigError
from lrt.evaluation.discovery import (
    RUN_REASONERS,
    Checkpoint,
    as_list,
    load_adapters,
    load_checkpoints,
    read_overrides,
    refuse_seen,
    swept_keys,
    take_recorded_model,
)
from lrt.evaluation.jobs import EvalTask, run_jobs
from lrt.evaluation.methods import METHODS, loader
from lrt.evaluation.pairs import check_pairs, load_predictions, paired_rows, paired_table
from lrt.evaluation.tabulate import tabulate
from lrt.lm.latent_lm import LatentLM
from lrt.loggers import build_loggers
from lrt.modes import DecodeConfig, mode_labels, mode_of, needs_reasoner, of_base
from lrt.plots import pareto_plot, sweep_plot
from lrt.report import by_steps_rows, comparison_columns, print_table
from lrt.schema import typed

log = logging.getLogger("lrt.evaluate")


def check_path(key: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise ConfigError(f"{key}={value} does not exist")


def validate_evaluate(cfg: DictConfig) -> list[str]:
    """Check an `evaluate.yaml` composition before any model loads; returns the mode labels."""
    if any(int(b) <= 0 for b in cfg.cot_budgets):
        raise ConfigError(f"cot_budgets={list(cfg.cot_budgets)} must be positive integers")
    budgets = [int(b) for b in cfg.cot_budgets]
    labels = mode_labels(as_list(cfg.modes), budgets, bool(cfg.get("blind", True)))
    if not labels:
        raise ConfigError("modes must list at least one mode")
    has_reasoner = bool(as_list(cfg.get("checkpoints")) or as_list(cfg.get("sweep_dir")))
    if not has_reasoner and all(needs_reasoner(m) for m in labels):
        raise ConfigError(
            f"modes={as_list(cfg.modes)} all need a reasoner; set checkpoints or sweep_dir"
        )
    for key in ("batch_size", "max_answer_tokens"):
        if cfg[key] is not None and int(cfg[key]) <= 0:
            raise ConfigError(f"{key}={cfg[key]} must be positive")
    if cfg.limit is not None and int(cfg.limit) <= 0:
        raise ConfigError(f"limit={cfg.limit} must be positive (or null for the whole split)")
    if cfg.run_reasoner not in RUN_REASONERS:
        raise ConfigError(f"run_reasoner={cfg.run_reasoner!r} is not one of {RUN_REASONERS}")
    for key in ("checkpoints", "sweep_dir", "adapter"):
        for path in as_list(cfg.get(key)):
            check_path(key, path)
    pk = cfg.pass_at_k
    if int(pk.n) < 0:
        raise ConfigError(f"pass_at_k.n={pk.n} must be 0 (greedy only) or positive")
    if float(pk.latent_noise) < 0:
        raise ConfigError(f"pass_at_k.latent_noise={pk.latent_noise} must be >= 0")
    if int(pk.n) > 0:
        if float(pk.temperature) <= 0 and float(pk.latent_noise) == 0:
            raise ConfigError(
                f"pass_at_k.temperature={pk.temperature} must be > 0 to sample (or "
                "pass_at_k.latent_noise > 0, which samples the latents)"
            )
        for k in pk.k:
            if not 0 < int(k) <= int(pk.n):
                raise ConfigError(f"pass_at_k.k={k} must be between 1 and pass_at_k.n={pk.n}")
    return labels


def load_tasks(cfg: DictConfig) -> list[EvalTask]:
    """The test split of every task in `cfg.tasks` (none: the `data` group), `limit` applied.

    `tasks=[gsm8k_local,math_local]` selects configs of the `tasks` group, each a data config
    placed under `tasks.<name>` by Hydra itself, so `tasks.math_local.test.path=...` works.
    """
    chosen = dict(cfg.get("tasks") or {})
    if not chosen:
        name = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
        chosen = {name or str(cfg.data.task): cfg.data}
    tasks = []
    for name, node in chosen.items():
        where = f"tasks.{name}" if cfg.get("tasks") else "data"
        data = typed(DataConfig, node, where)
        if data.test is None:
            raise ConfigError(f"{where}.test is null: task {name!r} has no test split")
        split = data.test if cfg.limit is None else replace(data.test, limit=int(cfg.limit))
        records = load_split(data.task, split, data.on_error, data.options)
        budget = data.max_answer_tokens if cfg.max_answer_tokens is None else cfg.max_answer_tokens
        tasks.append(EvalTask(name, data.task, records, data.prompt, int(budget)))
        log.info("%s: %d test questions", name, len(records))
    return tasks


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    """Package versions recorded with every result, so numbers can be traced to code."""
    out = {"python": platform.python_version(), "lrt": lrt.__version__}
    for package in ("torch", "transformers", "lightning", "hydra-core"):
        out[package] = metadata.version(package)
    return out


def _table_row(row: Mapping[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """The columns of `results.md` (results.json has every metric)."""
    routed = (
        f"lrt {row['routed_lrt']:.0%} / cot {row['routed_cot']:.0%}"
        if row["routed_lrt"] is not None
        else ""
    )
    return {
        "checkpoint": row["checkpoint"],
        "task": row["task"],
        "mode": row["mode"],
        "questions": row["questions"],
        **comparison_columns(row),
        **{f"pass@{k}": row[f"pass@{k}"] for k in ks},
        "mean tokens": row["mean_tokens"],
        "p50": row["p50_tokens"],
        "p95": row["p95_tokens"],
        "positions": row["mean_positions"],
        "s/question": row["time_per_question_s"],
        "batch latency s": row["batch_latency_s"],
        "TTFT s": row["ttft_s"],
        "q/s": row["questions_per_s"],
        "truncated": row["truncated"],
        "routed": routed,
    }


def _sweep_rows(
    rows: Sequence[Mapping[str, Any]], checkpoints: Sequence[Checkpoint]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (swept run, task, mode) with the run's swept override values."""
    runs = {c.label: read_overrides(c.sweep_run) for c in checkpoints if c.sweep_run is not None}
    keys = swept_keys(list(runs.values()))
    table = [
        {
            "run": r["checkpoint"],
            **{k: runs[r["checkpoint"]].get(k, "") for k in keys},
            "task": r["task"],
            "mode": r["mode"],
            "accuracy": r["accuracy"],
            "mean_tokens": r["mean_tokens"],
        }
        for r in rows
        if r["checkpoint"] in runs
    ]
    return table, keys


def _log_to_loggers(
    cfg: DictConfig,
    out_dir: Path,
    config: dict[str, Any],
    rows: Sequence[Mapping[str, Any]],
    table: Sequence[Mapping[str, Any]],
    images: Mapping[str, Path],
) -> None:
    """wandb gets the table and the plots; other loggers get every metric as a scalar."""
    for logger in build_loggers(cfg.get("logger"), str(out_dir)):
        logger.log_hyperparams(config)
        if isinstance(logger, WandbLogger):
            columns = list(table[0])
            logger.log_table("eval/results", columns, [[r[c] for c in columns] for r in table])
            for name, path in images.items():
                logger.log_image(f"eval/{name}", [str(path)])
        else:
            logger.log_metrics(
                {
                    f"{r['checkpoint']}/{r['task']}/{r['mode']}/{key}": float(value)
                    for r in rows
                    for key, value in r.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                },
                step=0,
            )
        logger.finalize("success")


def write_tabulated(folder: str, out_dir: Path) -> Path:
    """`tabulate=<folder>`: the results already under `folder` in one table, nothing decoded."""
    table, keys = tabulate(folder)
    title = f"results under {folder}" + (f" (runs differ in {', '.join(keys)})" if keys else "")
    print_table(title, table, path=out_dir / "tabulated.md")
    (out_dir / "tabulated.json").write_text(json.dumps(table, indent=2) + "\n")
    log.info("table in %s", out_dir / "tabulated.md")
    return out_dir


def evaluate(cfg: DictConfig) -> Path:
    """Run an `evaluate.yaml` composition and write its results folder; returns the folder.

    Writes `results.json` (every metric, the resolved config, package versions),
    `predictions.jsonl`, `results.md`, `pareto.png` and, for reasoners found through
    `sweep_dir`, `sweep.md` and `sweep.png`; with `tabulate`, only `tabulated.md` and
    `tabulated.json` from the results already measured.
    """
    quiet_libraries()
    if cfg.output_dir is None:
        if not HydraConfig.initialized():
            raise ConfigError("output_dir must be set when evaluate() runs outside @hydra.main")
        with open_dict(cfg):
            cfg.output_dir = HydraConfig.get().runtime.output_dir
    out_dir = Path(cfg.output_dir)
    if cfg.get("tabulate"):
        return write_tabulated(str(cfg.tabulate), out_dir)
    labels = validate_evaluate(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = load_tasks(cfg)
    take_recorded_model(cfg)
    backbone = load_backbone(backbone_config(cfg.model))
    backbone.model.to(_device(cfg.device))
    base = LatentLM(backbone).to(backbone.device)
    log.info("base %s on %s", backbone.name, backbone.device)
    checkpoints = load_checkpoints(cfg, base)
    adapters = load_adapters(cfg, base)

    base_labels = [m for m in labels if of_base(m)]
    reasoner_labels = [m for m in labels if needs_reasoner(m)]
    if reasoner_labels and not checkpoints:
        log.warning(
            "modes %s need a reasoner and are skipped: pass checkpoints=<path> or sweep_dir=<path>",
            ", ".join(reasoner_labels),
        )
    jobs = [(Checkpoint("base", None, base), m) for m in base_labels]
    jobs += [(a, m) for a in adapters for m in base_labels]
    jobs += [(c, m) for c in checkpoints for m in reasoner_labels]
    for key in METHODS:
        method_labels = [m for m in labels if mode_of(m).method == key]
        sources = as_list(cfg.get(key))
        if method_labels and not sources:
            log.warning("modes %s are skipped: pass %s=<path>", ", ".join(method_labels), key)
        found = loader(key)(sources, base) if sources and method_labels else []
        jobs += [(c, m) for c in found for m in method_labels]
    refuse_seen([c for c, _ in jobs], {t.name: t.records for t in tasks})
    pairs = [list(p) for p in cfg.get("paired") or []]
    check_pairs([c.label for c, _ in jobs], pairs)

    pk = cfg.pass_at_k
    sampling = int(pk.n) > 0
    decode = DecodeConfig(  # max_answer_tokens: each task's, set in run_jobs
        force_answer=str(cfg.force_answer),
        temperature=float(pk.temperature) if sampling else 0.0,
        top_p=float(pk.top_p) if sampling else 1.0,
        latent_noise=float(pk.latent_noise) if sampling else 0.0,
        hybrid_threshold=float(cfg.hybrid.threshold),
    )
    samples = max(int(pk.n), 1)
    ks = [int(k) for k in pk.k] if sampling else []
    rows = run_jobs(
        jobs,
        tasks,
        decode,
        out_dir / "predictions.jsonl",
        int(cfg.batch_size),
        int(cfg.seed),
        samples,
        ks,
    )

    decoding = (
        f"{samples} samples/question, T={decode.temperature}, top-p={decode.top_p}, "
        f"latent noise {decode.latent_noise} x embedding RMS"
        if sampling
        else "greedy"
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    result = {"decoding": decoding, "results": rows, "config": config, "versions": versions()}
    table = [_table_row(r, ks) for r in rows]
    print_table(f"evaluation ({decoding})", table, path=out_dir / "results.md")
    if steps := by_steps_rows(rows):
        print_table("accuracy by solution steps", steps, path=out_dir / "results_steps.md")
    images = {"pareto": pareto_plot(rows, out_dir / "pareto.png")}
    sweep, keys = _sweep_rows(rows, checkpoints)
    if sweep:
        print_table(f"sweep over {', '.join(keys) or 'runs'}", sweep, path=out_dir / "sweep.md")
        images["sweep"] = sweep_plot(sweep, keys, out_dir / "sweep.png")
        result["sweep"] = {"keys": keys, "rows": sweep}
    if pairs:
        result["paired"] = paired_rows(
            load_predictions(out_dir / "predictions.jsonl"), pairs, int(cfg.seed)
        )
        print_table(
            "paired differences (a - b)", paired_table(result["paired"]), out_dir / "paired.md"
        )
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    _log_to_loggers(cfg, out_dir, config, rows, table, images)
    log.info("results in %s", out_dir)
    return out_dir
