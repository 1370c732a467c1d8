"""What a list of graded predictions measures: accuracy and pass@k, tokens and positions,
time per question and latency, truncations, and for `hybrid` how questions were routed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lrt.evaluation.predict import Prediction


def accuracy(predictions: Sequence[Prediction]) -> float:
    return sum(p.correct for p in predictions) / max(len(predictions), 1)


def mean_tokens(predictions: Sequence[Prediction]) -> float:
    return sum(p.tokens for p in predictions) / max(len(predictions), 1)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `c` correct out of `n` samples: `1 - C(n-c, k) / C(n, k)`.

    The chance that k samples drawn without replacement from the n contain a correct one
    (Chen et al., 2021); exact integer binomials, so large n loses no precision.
    """
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def summarize(
    predictions: Sequence[Prediction], ks: Sequence[int] = (), wall_s: float | None = None
) -> dict[str, Any]:
    """Metrics of one (checkpoint, task, mode): every key is present, None where undefined.

    `accuracy` is pass@1 averaged over all samples (greedy: one sample per question).
    `mean_positions` counts what the base processed per answer (prompt, thinking-span inputs
    with the K latents, decoded tokens), the prefill cost `mean_tokens` leaves out.
    `time_per_question_s` is batch time over the batch's questions (the amortised cost),
    `batch_latency_s` the time an answer took to arrive. `questions_per_s` is questions over
    `wall_s` (grading included) when given, else derived from the time per question.
    """
    per_question: dict[str, list[bool]] = {}
    for p in predictions:
        per_question.setdefault(p.id, []).append(p.correct)
    questions = len(per_question)
    tokens = np.array([p.tokens for p in predictions], dtype=float)
    per_q = _mean([p.time_per_question_s for p in predictions])
    metrics: dict[str, Any] = {
        "questions": questions,
        "samples": len(predictions) // max(questions, 1),
        "accuracy": accuracy(predictions),
    }
    for k in ks:
        metrics[f"pass@{k}"] = sum(
            pass_at_k(len(c), sum(c), k) for c in per_question.values()
        ) / max(questions, 1)
    routes = [p.route for p in predictions if p.route is not None]
    metrics |= {
        "mean_tokens": float(tokens.mean()) if len(tokens) else 0.0,
        "p50_tokens": float(np.percentile(tokens, 50)) if len(tokens) else 0.0,
        "p95_tokens": float(np.percentile(tokens, 95)) if len(tokens) else 0.0,
        "mean_positions": _mean([p.positions for p in predictions]),
        "mean_prompt": _mean([p.positions - p.after_prompt for p in predictions]),
        "time_per_question_s": per_q,
        "batch_latency_s": _mean([p.batch_time_s for p in predictions]),
        "questions_per_s": questions / wall_s if wall_s else (1.0 / per_q if per_q > 0 else 0.0),
        "truncated": sum(p.truncated for p in predictions),
        "routed_lrt": routes.count("lrt") / len(routes) if routes else None,
        "routed_cot": routes.count("cot") / len(routes) if routes else None,
    }
    return metrics
