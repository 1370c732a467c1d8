"""Decoding every evaluation job: each (task, checkpoint, mode) as predictions and a metrics row.

A checkpoint's modes are decoded together, from one encode of each prompt (`predict_modes`),
under one progress bar per (checkpoint, task) that shows the running accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lrt.data.prompts import PromptConfig
from lrt.data.records import Record
from lrt.evaluation.discovery import Checkpoint
from lrt.evaluation.metrics import compare_to_best_baseline, compare_to_swap, summarize
from lrt.evaluation.predict import predict, predict_modes
from lrt.evaluation.prediction import Prediction
from lrt.modes import DecodeConfig


@dataclass
class EvalTask:
    """One task to evaluate: its label (the data config name), grader name and test records."""

    name: str
    task: str
    records: list[Record]
    prompt: PromptConfig
    max_answer_tokens: int
    """The task's answer budget (`data.max_answer_tokens`), or evaluate's override."""


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
    )


def _warm_up(jobs: Sequence[tuple[Checkpoint, str]], task: EvalTask, decode: DecodeConfig) -> None:
    """Decode one question per model untimed, so one-off start-up costs (kernel selection, CUDA
    context, allocator growth) do not land in the latency of whichever job comes first."""
    short = replace(decode, max_answer_tokens=1, budget=1)
    warmed: set[int] = set()
    for ckpt, mode in jobs:
        if id(ckpt.lm) not in warmed:
            predict(ckpt.lm, task.task, task.records[:1], task.prompt, mode, short)
            warmed.add(id(ckpt.lm))


def _by_checkpoint(jobs: Sequence[tuple[Checkpoint, str]]) -> list[tuple[Checkpoint, list[str]]]:
    """The jobs grouped by checkpoint, in first-seen order, so that each checkpoint's modes
    are decoded together from one encode of each prompt (`predict_modes`)."""
    groups: dict[int, tuple[Checkpoint, list[str]]] = {}
    for ckpt, mode in jobs:
        groups.setdefault(id(ckpt), (ckpt, []))[1].append(mode)
    return list(groups.values())


def run_jobs(
    jobs: Sequence[tuple[Checkpoint, str]],
    tasks: Sequence[EvalTask],
    decode: DecodeConfig,
    predictions: Path,
    batch_size: int,
    seed: int,
    samples: int = 1,
    ks: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """Every (task, checkpoint, mode): predictions appended to `predictions`, one metrics row each.

    A checkpoint's modes share one encode of each prompt per task; a progress bar per
    (checkpoint, task) shows the running accuracy over its modes.
    """
    _warm_up(jobs, tasks[0], decode)
    rows: list[dict[str, Any]] = []
    kept: list[list[Prediction]] = []
    with predictions.open("w") as jsonl, _progress() as progress:
        for task in tasks:
            for ckpt, modes in _by_checkpoint(jobs):
                bar = progress.add_task(
                    f"{ckpt.label} · {task.name} · {', '.join(modes)}",
                    total=len(task.records) * samples * len(modes),
                    acc=0.0,
                )
                seen: list[bool] = []

                def on_batch(batch: list[Prediction], bar: Any = bar, seen: list = seen) -> None:
                    seen.extend(p.correct for p in batch)
                    progress.update(bar, advance=len(batch), acc=sum(seen) / len(seen))

                answered = predict_modes(
                    ckpt.lm,
                    task.task,
                    task.records,
                    task.prompt,
                    modes,
                    replace(decode, max_answer_tokens=task.max_answer_tokens),
                    batch_size=batch_size,
                    seed=seed,
                    on_batch=on_batch,
                    samples=samples,
                )
                for mode in modes:
                    preds = answered[mode]
                    for p in preds:
                        jsonl.write(json.dumps(p.row(ckpt.label, task.name)) + "\n")
                    rows.append(
                        {
                            "checkpoint": ckpt.label,
                            "checkpoint_path": str(ckpt.path) if ckpt.path else None,
                            "task": task.name,
                            "mode": mode,
                            **summarize(preds, ks),
                        }
                    )
                    kept.append(preds)
    compare_to_best_baseline(rows, kept, seed)
    compare_to_swap(rows, kept, seed)
    return rows
