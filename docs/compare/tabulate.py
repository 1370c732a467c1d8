"""docs/compare/results.md from one evaluate.py run and run.sh's training times.

    python docs/compare/tabulate.py --eval <evaluate.py output_dir> --times <train_times.tsv> \
        --out docs/compare/results.md

Reads `results.json` (every row's metrics and the `paired=` rows) and `predictions.jsonl` (to
pair every row with the base model's `direct` on the same questions), and the TSV run.sh writes
(`name, wall seconds, ok|failed, training budget`). Nothing is decoded.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

# Run as a script, this folder is sys.path[0], and this file would shadow the `tabulate`
# package that torch imports at exit.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from lrt.evaluation.metrics import paired_difference  # noqa: E402
from lrt.evaluation.pairs import load_predictions, paired_table  # noqa: E402
from lrt.report import markdown_table, with_interval  # noqa: E402

# (method, checkpoint label as evaluate.py prints it, mode or mode prefix, training run names
# whose wall times add up to the method's cost: its own stage first).
METHODS: list[tuple[str, str, str, list[str]]] = [
    ("base model, direct", "base", "direct", []),
    ("base model, nothink", "base", "nothink", []),
    ("base model, cot", "base", "cot@", []),
    ("LRT SFT", "lrt_sft/final", "lrt", ["lrt_sft"]),
    ("LRT SFT + GRPO", "lrt_sft_grpo/final", "lrt", ["lrt_sft_grpo", "lrt_sft"]),
    ("control (question-blind prompt) SFT", "control_sft/final", "lrt", ["control_sft"]),
    ("control + GRPO", "control_sft_grpo/final", "lrt", ["control_sft_grpo", "control_sft"]),
    ("STIR", "stir:stir", "stir@", ["stir"]),
    ("RiM", "rim:rim/final", "rim", ["rim"]),
    ("token-space GRPO (LoRA), direct", "adapter:grpo_cot/final", "direct", ["grpo_cot"]),
    ("token-space GRPO (LoRA), nothink", "adapter:grpo_cot/final", "nothink", ["grpo_cot"]),
    ("token-space GRPO (LoRA), cot", "adapter:grpo_cot/final", "cot@", ["grpo_cot"]),
]


def read_times(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        return {r[0]: {"seconds": r[1], "status": r[2], "budget": r[3]} for r in rows if r}


def minutes(seconds: int) -> str:
    return f"{seconds // 60} min {seconds % 60:02d} s"


def training_cell(names: list[str], times: dict[str, dict[str, str]]) -> str:
    """The method's own stage, and with the stage it started from, the sum."""
    if not names:
        return "none"
    found = [int(times[n]["seconds"]) for n in names if n in times]
    if not found:
        return "?"
    own = minutes(found[0])
    return own if len(found) == 1 else f"{own} (+ SFT: {minutes(sum(found))})"


def matches(row: dict[str, Any], label: str, mode: str) -> bool:
    if row["checkpoint"] != label:
        return False
    return row["mode"].startswith(mode) if mode.endswith("@") else row["mode"] == mode


def versus(preds: dict, row: dict[str, Any], direct: tuple[str, str, str]) -> str:
    key = (row["checkpoint"], row["task"], row["mode"])
    if key == direct:
        return "(reference)"
    if direct not in preds:
        return ""
    d = paired_difference(preds[key], preds[direct])
    p = "" if d["mcnemar_p"] is None else f", McNemar p={d['mcnemar_p']:.3g}"
    return with_interval(d["difference"], d["ci"], signed=True) + p


def table_row(method: str, row: dict, preds: dict, direct: tuple, train: str, budget: str) -> dict:
    tokens = f"{row['mean_tokens']:.1f}"
    if row.get("mean_probe_tokens"):
        tokens += f" (+{row['mean_probe_tokens']:.1f} probe)"
    swap = row.get("vs_swap")
    return {
        "method": method,
        "checkpoint": row["checkpoint"],
        "mode": row["mode"],
        "accuracy [95% CI]": with_interval(row["accuracy"], row["accuracy_ci"]),
        "vs base direct (paired)": versus(preds, row, direct),
        "lrt − lrt-swap": with_interval(swap["difference"], swap["ci"], signed=True)
        if swap
        else "",
        "mean tokens": tokens,
        "positions": f"{row['mean_positions']:.1f}",
        "s/question": f"{row['time_per_question_s']:.3f}",
        "training wall time": train,
        "training budget": budget,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=Path, required=True, help="evaluate.py's output_dir")
    parser.add_argument("--times", type=Path, required=True, help="run.sh's train_times.tsv")
    parser.add_argument("--out", type=Path, required=True, help="results.md to write")
    args = parser.parse_args()

    result = json.loads((args.eval / "results.json").read_text())
    rows, config = result["results"], result["config"]
    preds = load_predictions(args.eval / "predictions.jsonl")
    times = read_times(args.times)
    task = rows[0]["task"]
    direct = ("base", task, "direct")

    table, used = [], set()
    for method, label, mode, names in METHODS:
        for i, row in enumerate(rows):
            if i not in used and row["task"] == task and matches(row, label, mode):
                used.add(i)
                budget = times[names[0]]["budget"] if names and names[0] in times else ""
                cell = training_cell(names, times)
                table.append(table_row(method, row, preds, direct, cell, budget or "none"))
    others = [
        table_row("(control row)", row, preds, direct, "", "")
        for i, row in enumerate(rows)
        if i not in used
    ]
    best = [r for r in rows if r.get("best_baseline")]
    failed = [f"`{n}`" for n, t in times.items() if t["status"] != "ok"]
    evaluation = times.get("evaluate", {})
    limit = config.get("limit")
    questions = rows[0]["questions"]

    lines = [
        "# Every method on the default arith task, one evaluation",
        "",
        "Written by `docs/compare/run.sh` (then `docs/compare/tabulate.py`); see README.md beside",
        "it for the commands and budgets.",
        "",
        f"- Base model: `{config['model']['name']}`; task `{task}`, the first {questions} "
        f"held-out questions (`limit={limit}`), {result['decoding']} decoding, one "
        "`evaluate.py` run (every row on the same questions); the base's modes in its own "
        "default system line, `lrt` and `rim` in the run's (`model.system_prompt`).",
        "- Accuracy intervals are 95% bootstrap over questions; `vs base direct` is the row "
        "minus the base model's `direct` on the same questions (paired bootstrap, McNemar p). "
        "evaluate.py's own best no-thinking baseline in this run: "
        + (", ".join(f"`{r['mode']}`" for r in best) or "none")
        + ".",
        "- `positions`: every position the base processed per question (the prompt, the "
        "thinking span's inputs with the K latents, decoded tokens, STIR's probes and "
        "re-feeds); `mean tokens`: tokens the model generated; `s/question`: batch time "
        f"over its questions at `batch_size={config.get('batch_size')}`.",
        "- Training wall time: measured around each `train.py` in run.sh (two runs side by "
        "side, one thread each); a GRPO row adds its SFT's. `CUT` in the budget: shorter than "
        "the stage's shipped default, to fit the 2-hour run.",
    ]
    if evaluation:
        lines.append(
            f"- The evaluation took {minutes(int(evaluation['seconds']))} ({evaluation['budget']})."
        )
    if failed:
        lines.append(f"- **Failed, so missing from the table:** {', '.join(failed)} (run.sh logs).")
    lines += ["", "## Methods", "", markdown_table(table)]
    if others:
        lines += ["## Other rows (controls evaluate.py adds)", "", markdown_table(others)]
    if result.get("paired"):
        lines += [
            "## Method against its control (`paired=`)",
            "",
            markdown_table(paired_table(result["paired"])),
        ]
    lines += [
        "## Pareto plot",
        "",
        "![accuracy against positions](pareto.png)",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} ({len(table)} method rows, {len(others)} other rows)")


if __name__ == "__main__":
    main()
