"""A method against its control over several seeds: accuracy per seed, mean and sd, and the
paired difference pooled over seeds (bootstrap over questions).

One run per row moves by several points with the thread count alone on 2,400 training
questions, so a claim about latents needs seeds (the brief: screen on one, confirm on three).
Each seed's run is paired with the control's run of the same seed on the same questions; a
question's difference is averaged over the seeds, and the interval resamples questions, so it
holds both the question and the seed variation a single run hides.

    python -m lrt.evaluation.pooled --runs R0 R1 R2 --against C0 C1 C2 [--mode lrt]
        [--against-mode lrt] [--against-checkpoint base]

Each run is a training run folder (its `final_eval_predictions.jsonl`) or an evaluation
folder (its `predictions.jsonl`, checkpoint `final` or the one `--checkpoint` names).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lrt.errors import ConfigError
from lrt.evaluation.metrics import bootstrap_interval, per_question
from lrt.evaluation.pairs import load_predictions

FILES = ("final_eval_predictions.jsonl", "predictions.jsonl")


def run_scores(run: Path, mode: str, checkpoint: str = "final") -> dict[str, float]:
    """Per question, the `mode` accuracy of `checkpoint` in a run or evaluation folder."""
    path = next((run / name for name in FILES if (run / name).is_file()), None)
    if path is None:
        raise ConfigError(f"{run} has none of {', '.join(FILES)}")
    kept = [
        answer
        for (label, _, row_mode), answers in load_predictions(path).items()
        if label == checkpoint and row_mode == mode
        for answer in answers
    ]
    if not kept:
        raise ConfigError(f"{path} has no answer in mode {mode!r} of checkpoint {checkpoint!r}")
    return per_question(kept)


def pooled(
    runs: Sequence[dict[str, float]], against: Sequence[dict[str, float]], seed: int = 0
) -> dict[str, Any]:
    """Each seed's accuracy on the questions every run answered, their mean and sd, for both
    sides, and `runs - against` pooled: per question the mean over seeds of the paired
    difference, with a 95% bootstrap interval over questions."""
    if len(runs) != len(against) or not runs:
        raise ConfigError(f"{len(runs)} runs against {len(against)}: pair one run per seed")
    common = sorted(set.intersection(*(set(r) for r in [*runs, *against])))
    if not common:
        raise ConfigError("the runs share no question")
    a = np.array([[r[q] for q in common] for r in runs])
    b = np.array([[r[q] for q in common] for r in against])
    diffs = (a - b).mean(axis=0)
    lo, hi = bootstrap_interval(diffs, seed)

    def side(m: np.ndarray) -> dict[str, Any]:
        accs = [float(x) for x in m.mean(axis=1)]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        return {"per_seed": accs, "mean": float(np.mean(accs)), "sd": sd}

    return {
        "questions": len(common),
        "seeds": len(runs),
        "runs": side(a),
        "against": side(b),
        "difference": float(diffs.mean()),
        "ci": [lo, hi],
        "win": lo > 0 or hi < 0,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--against", nargs="+", type=Path, required=True)
    parser.add_argument("--mode", default="lrt")
    parser.add_argument("--against-mode", default=None, help="default: --mode")
    parser.add_argument("--checkpoint", default="final")
    parser.add_argument("--against-checkpoint", default=None, help="default: --checkpoint")
    args = parser.parse_args(argv)
    other = args.against_mode or args.mode
    result = pooled(
        [run_scores(r, args.mode, args.checkpoint) for r in args.runs],
        [run_scores(r, other, args.against_checkpoint or args.checkpoint) for r in args.against],
    )
    a, b = result["runs"], result["against"]

    def pct(side: dict[str, Any]) -> str:
        seeds = ", ".join(f"{100 * x:.1f}" for x in side["per_seed"])
        return f"{seeds} (mean {100 * side['mean']:.1f} ± {100 * side['sd']:.1f})"

    lo, hi = result["ci"]
    print(f"{args.mode}: {pct(a)}")
    print(f"{other} (against): {pct(b)}")
    print(
        f"pooled {args.mode} − {other}: {100 * result['difference']:+.1f} "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pts over {result['questions']} questions x "
        f"{result['seeds']} seeds{' (the interval excludes 0)' if result['win'] else ''}"
    )
    return result


if __name__ == "__main__":
    main()
