"""What a list of graded predictions measures: accuracy and pass@k, tokens and positions,
time per question and latency, truncations, and for `hybrid` how questions were routed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lrt.modes import mode_of

if TYPE_CHECKING:
    from lrt.evaluation.prediction import Prediction


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


def summarize(predictions: Sequence[Prediction], ks: Sequence[int] = ()) -> dict[str, Any]:
    """Metrics of one (checkpoint, task, mode): every key is present, None where undefined.

    `accuracy` is pass@1 averaged over all samples (greedy: one sample per question).
    `mean_probe_tokens` are look-ahead tokens a method discarded (`stir`), and
    `mean_budget_used` adds them to `mean_tokens`, as STIR reports its cost.
    `mean_positions` counts what the base processed per answer (prompt, thinking-span inputs
    with the K latents, decoded tokens), the prefill cost `mean_tokens` leaves out.
    `accuracy_by_steps` splits the accuracy by the question's number of solution steps;
    `latent_spread` is the mean spread of `lrt`'s latents across a batch's questions.
    `time_per_question_s` is batch time over the batch's questions (the amortised cost),
    `batch_latency_s` the time an answer took to arrive, `questions_per_s` the throughput at
    the batch size (modes decoded from one shared encode each pay for it, as if run alone).
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
    spreads = [p.latent_spread for p in predictions if p.latent_spread is not None]
    by_steps: dict[int, list[bool]] = {}
    for p in predictions:
        if p.steps is not None:
            by_steps.setdefault(p.steps, []).append(p.correct)
    metrics |= {
        "mean_tokens": float(tokens.mean()) if len(tokens) else 0.0,
        "p50_tokens": float(np.percentile(tokens, 50)) if len(tokens) else 0.0,
        "p95_tokens": float(np.percentile(tokens, 95)) if len(tokens) else 0.0,
        "mean_probe_tokens": _mean([p.probe_tokens for p in predictions]),
        "mean_budget_used": _mean([p.tokens + p.probe_tokens for p in predictions]),
        "mean_positions": _mean([p.positions for p in predictions]),
        "mean_prompt": _mean([p.positions - p.after_prompt for p in predictions]),
        "time_per_question_s": per_q,
        "batch_latency_s": _mean([p.batch_time_s for p in predictions]),
        "ttft_s": _mean([p.ttft_s for p in predictions]),
        "questions_per_s": 1.0 / per_q if per_q > 0 else 0.0,
        "truncated": sum(p.truncated for p in predictions),
        "routed_lrt": routes.count("lrt") / len(routes) if routes else None,
        "routed_cot": routes.count("cot") / len(routes) if routes else None,
        "latent_spread": _mean(spreads) if spreads else None,
        # Accuracy and question count per number of solution steps (arith's operations,
        # GSM8K's calculations): where the latents help; None when the task states no steps.
        "accuracy_by_steps": {
            n: {"accuracy": sum(c) / len(c), "samples": len(c)} for n, c in sorted(by_steps.items())
        }
        or None,
    }
    return metrics


# --- uncertainty ----------------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 2000
LEVEL = 0.95


def per_question(predictions: Sequence[Prediction]) -> dict[str, float]:
    """Each question's accuracy over its samples (0 or 1 when greedy)."""
    scores: dict[str, list[bool]] = {}
    for p in predictions:
        scores.setdefault(p.id, []).append(p.correct)
    return {q: sum(c) / len(c) for q, c in scores.items()}


def bootstrap_interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of `values` over resampled questions."""
    if len(values) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    means = values[index].mean(axis=1)
    tail = (1 - LEVEL) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def accuracy_interval(predictions: Sequence[Prediction], seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the accuracy, resampling questions (their samples together)."""
    return bootstrap_interval(np.array(list(per_question(predictions).values())), seed)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (a right and b wrong, and the
    reverse): under no difference each is a fair coin flip."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(
    a: Sequence[Prediction], b: Sequence[Prediction], seed: int = 0
) -> dict[str, Any]:
    """Accuracy of `a` minus that of `b` on the questions both answered, with a 95% bootstrap
    interval over those questions (paired: a question's two scores are resampled together),
    the exact McNemar p for greedy rows, and `win`: the interval excludes 0."""
    qa, qb = per_question(a), per_question(b)
    common = sorted(set(qa) & set(qb))
    diffs = np.array([qa[q] - qb[q] for q in common])
    lo, hi = bootstrap_interval(diffs, seed)
    greedy = all(v in (0.0, 1.0) for q in common for v in (qa[q], qb[q]))
    only_a = sum(qa[q] > qb[q] for q in common)
    only_b = sum(qb[q] > qa[q] for q in common)
    return {
        "questions": len(common),
        "difference": float(diffs.mean()) if len(diffs) else 0.0,
        "ci": [lo, hi],
        "mcnemar_p": mcnemar_p(only_a, only_b) if greedy else None,
        "win": lo > 0 or hi < 0,
    }


def compare_to_best_baseline(
    rows: list[dict[str, Any]], predictions: Sequence[Sequence[Prediction]], seed: int = 0
) -> None:
    """Mark, among rows of the same task, the best no-thinking baseline of the bare base
    (`direct`, `nothink`), and give every other row its paired difference against it.

    Adds `accuracy_ci` to every row, `best_baseline` (True on that row) and `vs_best_baseline`
    (the `paired_difference` dict, with the baseline's mode) to the others.
    """
    for row, preds in zip(rows, predictions, strict=True):
        row["accuracy_ci"] = list(accuracy_interval(preds, seed))
    for task in dict.fromkeys(r.get("task") for r in rows):
        members = [i for i, r in enumerate(rows) if r.get("task") == task]
        candidates = [
            i
            for i in members
            if mode_of(rows[i]["mode"]).no_thinking and rows[i].get("checkpoint", "base") == "base"
        ]
        if not candidates:
            continue
        best = max(candidates, key=lambda i: rows[i]["accuracy"])
        rows[best]["best_baseline"] = True
        for i in members:
            if i != best:
                paired = paired_difference(predictions[i], predictions[best], seed)
                rows[i]["vs_best_baseline"] = {"against": rows[best]["mode"], **paired}


def compare_to_swap(
    rows: list[dict[str, Any]], predictions: Sequence[Sequence[Prediction]], seed: int = 0
) -> None:
    """Give every `lrt` row `vs_swap`: its paired difference against the `lrt-swap` row of the
    same checkpoint and task, a lower bound on what its latents carry about the question."""
    for row, preds in zip(rows, predictions, strict=True):
        if row["mode"] != "lrt":
            continue
        for other, swapped in zip(rows, predictions, strict=True):
            same = all(other.get(k) == row.get(k) for k in ("task", "checkpoint"))
            if other["mode"] == "lrt-swap" and same:
                row["vs_swap"] = paired_difference(preds, swapped, seed)
