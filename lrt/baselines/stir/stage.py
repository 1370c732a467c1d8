"""`train.py stage=stir`: mine a STIR library on training questions, no gradients.

Rollouts (batched, with a progress bar) and their contrastive pairs are written per question
as they finish (`mining.MinedStore`), so a killed run resumes where it stopped; then the top-C
pairs by quality become correction and anchor entries, the greedy DPP picks the library, and
`<run>/stir_library/` is written with the base model's name. Mining reads `data.train` only,
and a run whose training and test questions overlap is refused before any model loads.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lrt.backbone import load_backbone
from lrt.baselines.stir.decode import SteeredLM
from lrt.baselines.stir.library import FOLDER, Library
from lrt.baselines.stir.mining import MinedStore, mine_question, top_pairs
from lrt.baselines.stir.rollouts import contexts, gold_rollout, sample_rollouts
from lrt.baselines.stir.selection import select_entries
from lrt.baselines.stir.settings import STIRSettings
from lrt.data.loading import load_split
from lrt.data.overlap import shared_questions
from lrt.data.records import Record
from lrt.errors import ConfigError
from lrt.evaluation.predict import mode_rows
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig, parse_mode
from lrt.report import held_out_rows, print_table

if TYPE_CHECKING:
    from lrt.config import TrainConfig

log = logging.getLogger(__name__)


def mining_records(config: TrainConfig) -> tuple[list[Record], list[Record]]:
    """(the first `stage.questions` training records, the test records), refused when they
    share a question: mining must never see an evaluation question."""
    data, settings = config.data, config.stage
    assert data.train is not None
    train_split = replace(data.train, limit=settings.questions)
    if data.test is not None and train_split.identity(data.task) == data.test.identity(data.task):
        raise ConfigError("data.train and data.test read the same split: STIR mines on training")
    train = load_split(data.task, train_split, data.on_error, data.options)
    test = load_split(data.task, data.test, data.on_error, data.options) if data.test else []
    shared = shared_questions(test, train)
    if shared:
        raise ConfigError(
            f"data.train and data.test share {len(shared)} questions (e.g. {shared[0].id!r}): "
            "STIR must mine on questions the evaluation never asks"
        )
    return train, test


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )


def mine(
    config: TrainConfig, lm: LatentLM, records: list[Record], store: MinedStore, layers: list[int]
) -> None:
    """Rollouts and pairs of every record not mined yet, saved per question as they finish."""
    settings: STIRSettings = config.stage
    todo = [q for q in range(len(records)) if not store.done(q)]
    context = contexts(lm, records, config.data.prompt)
    step = settings.batch_questions
    with _progress() as progress:
        bar = progress.add_task(
            "stir mining", total=len(records), completed=len(records) - len(todo), note=""
        )
        correct = total = 0
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            groups = sample_rollouts(
                lm,
                config.data.task,
                [records[q] for q in batch],
                batch,
                config.data.prompt,
                settings.rollouts,
                settings.temperature,
                settings.top_p,
                settings.max_new_tokens,
                settings.eta,
                config.data.max_answer_tokens,
                settings.delimiter,
                config.seed,
            )
            for q, group in zip(batch, groups, strict=True):
                gold = None
                if settings.pos_source == "rollout_or_gold":
                    gold = gold_rollout(
                        lm,
                        config.data.task,
                        records[q],
                        settings.eta,
                        settings.max_new_tokens,
                        settings.delimiter,
                    )
                pairs = mine_question(lm, q, context[q], group, gold, settings, layers)
                summary = {
                    "correct": sum(r.correct for r in group),
                    "rollouts": len(group),
                    "tokens": sum(r.tokens for r in group),
                    "segments": sum(len(r.ends) for r in group),
                }
                store.save(q, pairs, summary)
                correct, total = correct + summary["correct"], total + len(group)
            progress.update(bar, advance=len(batch), note=f"rollout acc {correct / total:.3f}")


def run_stir(config: TrainConfig, run_dir: Path, hyperparams: dict) -> Path:
    """Mine, select and save the library; then the held-out table (`final_eval.enabled`)."""
    settings: STIRSettings = config.stage
    OmegaConf.save(OmegaConf.create(hyperparams), run_dir / "config.yaml")
    records, test = mining_records(config)
    backbone = load_backbone(config.model)
    lm = LatentLM(backbone)
    layers = settings.layer_indices(int(backbone.model.config.num_hidden_layers))
    mining = {k: v for k, v in asdict(settings).items() if k not in ("online", "eval_modes")}
    for key in ("keep_top", "library_size", "diversity", "epsilon", "forced_per_control_point"):
        mining.pop(key)  # selection only: changing them re-selects from the mined pairs
    identity = {
        "base_model": backbone.name,
        "task": config.data.task,
        "seed": config.seed,
        "max_answer_tokens": config.data.max_answer_tokens,
        "layers": layers,
        "questions": [r.id for r in records],
        **mining,
    }
    folder = run_dir / FOLDER
    store = MinedStore(folder / "mined", identity)
    t0 = time.perf_counter()
    mine(config, lm, records, store, layers)
    mining_s = time.perf_counter() - t0
    mined = [store.load(q) for q in range(len(records))]
    pairs = [p for question_pairs, _ in mined for p in question_pairs]
    summaries = [s for _, s in mined]
    kept = top_pairs(pairs, settings.keep_top)
    stats: dict[str, Any] = {
        "questions": len(records),
        "rollouts": sum(s["rollouts"] for s in summaries),
        "rollout_accuracy": sum(s["correct"] for s in summaries)
        / max(1, sum(s["rollouts"] for s in summaries)),
        "mean_rollout_tokens": sum(s["tokens"] for s in summaries)
        / max(1, sum(s["rollouts"] for s in summaries)),
        "mean_segments": sum(s["segments"] for s in summaries)
        / max(1, sum(s["rollouts"] for s in summaries)),
        "pairs_mined": len(pairs),
        "pairs_kept": len(kept),
        "mining_s_this_process": mining_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    meta = {
        "base_model": backbone.name,
        "hidden_size": backbone.hidden_size,
        "task": config.data.task,
        "delimiter": settings.delimiter,
        "control_points": settings.control_points,
        "layers": layers,
        "online": asdict(settings.online),
        "mining": identity,
        "questions": [{"id": r.id, "question": r.question} for r in records],
    }
    full = Library.from_pairs(kept, backbone.hidden_size, meta)
    rows = select_entries(
        full.keys,
        full.quality,
        full.control_point,
        settings.library_size,
        settings.diversity,
        settings.epsilon,
        settings.forced_per_control_point,
    )
    library = full.subset(rows)
    stats["entries"] = len(library)
    library.meta["stats"] = stats
    library.save(folder)
    log.info("stir library: %d entries from %d pairs in %s (%s)", len(library), len(kept), folder,
             json.dumps(stats))  # fmt: skip
    if config.final_eval.enabled and test:
        final_comparison(config, SteeredLM(backbone, library), test, run_dir)
    return run_dir


def final_comparison(
    config: TrainConfig, lm: SteeredLM, records: list[Record], run_dir: Path
) -> list[dict]:
    """`stage.eval_modes` on the held-out questions, `cot` and `stir` at the mining budget."""
    settings: STIRSettings = config.stage
    modes = [
        f"{m}@{settings.max_new_tokens}" if parse_mode(m)[1] is None and m in ("cot", "stir") else m
        for m in settings.eval_modes
    ]
    rows = mode_rows(
        lm,
        config.data.task,
        records,
        config.data.prompt,
        modes,
        DecodeConfig(max_answer_tokens=config.data.max_answer_tokens),
        config.final_eval.batch_size,
        config.seed,
    )
    assert config.data.test is not None
    title = f"held-out {config.data.task} ({config.data.test.split})"
    print_table(title, held_out_rows(rows), path=run_dir / "final_eval.md")
    (run_dir / "final_eval.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
