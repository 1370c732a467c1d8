"""Paired differences between checkpoints, question by question (`evaluate.py paired=...`).

The table's own comparison is each row against the best no-thinking baseline. A training
stage is judged against the checkpoint it started from (GRPO against its SFT reasoner, and the
question-blind control against its own), on the same questions and the same mode: that is
what `paired=[[a, b], ...]` adds, `a - b` with its bootstrap interval and McNemar's p.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrt.errors import ConfigError
from lrt.evaluation.metrics import paired_difference, per_question
from lrt.evaluation.prediction import Prediction
from lrt.report import percent, with_interval

Key = tuple[str, str, str]
"""(checkpoint label, task, mode)."""


def load_predictions(path: Path) -> dict[Key, list[Prediction]]:
    """`predictions.jsonl` (evaluate.py's, or a run's `final_eval_predictions.jsonl`) grouped
    by (checkpoint, task, mode); a line that is not JSON is named by file and line."""
    groups: dict[Key, list[Prediction]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number} is not JSON: {err.msg}") from None
        key = (row.pop("checkpoint"), row.pop("task", None), row["mode"])
        groups.setdefault(key, []).append(Prediction(**row))
    return groups


def check_pairs(labels: Sequence[str], pairs: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """The pairs as (a, b); one that is not a pair, or a label that names no evaluated
    checkpoint, is a one-line error (checked before any decoding)."""
    checked = []
    known = sorted(set(labels))
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"paired: {list(pair)} is not a pair [a, b]")
        a, b = (str(x) for x in pair)
        for label in (a, b):
            if label not in known:
                raise ConfigError(f"paired: checkpoint {label!r} is not among {known}")
        checked.append((a, b))
    return checked


def paired_rows(
    predictions: dict[Key, list[Prediction]], pairs: Sequence[Sequence[str]], seed: int = 0
) -> list[dict[str, Any]]:
    """One row per pair and per (task, mode) both checkpoints ran: `a - b` on their common
    questions."""
    rows = []
    for a, b in check_pairs([k[0] for k in predictions], pairs):
        for (checkpoint, task, mode), preds in predictions.items():
            other = predictions.get((b, task, mode))
            if checkpoint != a or other is None:
                continue
            d = paired_difference(preds, other, seed)
            qa, qb = per_question(preds), per_question(other)
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "task": task,
                    "mode": mode,
                    "questions": d["questions"],
                    "a_accuracy": sum(qa.values()) / len(qa),
                    "b_accuracy": sum(qb.values()) / len(qb),
                    **d,
                }
            )
    return rows


def paired_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """`paired_rows` as printed: accuracies, the difference with its interval, McNemar's p."""
    return [
        {
            "a": r["a"],
            "b": r["b"],
            "task": r["task"],
            "mode": r["mode"],
            "questions": str(r["questions"]),
            "a accuracy": percent(r["a_accuracy"]),
            "b accuracy": percent(r["b_accuracy"]),
            "a − b [95% CI]": with_interval(r["difference"], r["ci"], signed=True)
            + (" (win)" if r["win"] and r["difference"] > 0 else ""),
            "McNemar p": "" if r["mcnemar_p"] is None else f"{r['mcnemar_p']:.3g}",
        }
        for r in rows
    ]
