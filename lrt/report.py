"""Printing and saving result tables (Rich on the console, Markdown on disk)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(title: str, rows: Sequence[dict[str, Any]], path: Path | None = None) -> str:
    """Print `rows` as a Rich table and, with `path`, save them as Markdown."""
    table = Table(title=title)
    for col in rows[0] if rows else []:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    Console(width=160).print(table)  # CI logs and Hydra runs are not terminals: keep width
    text = f"## {title}\n\n{markdown_table(rows)}"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def with_interval(value: float, ci: Sequence[float], signed: bool = False) -> str:
    """`21.5% [16.0, 27.5]`, or with `signed` a difference such as `+9.5 [3.0, 16.0] pts`."""
    lo, hi = (100 * c for c in ci)
    if signed:
        return f"{100 * value:+.1f} [{lo:+.1f}, {hi:+.1f}] pts"
    return f"{percent(value)} [{lo:.1f}, {hi:.1f}]"


def comparison_columns(row: dict[str, Any]) -> dict[str, str]:
    """The accuracy and paired-comparison columns every results table shows."""
    paired = row.get("vs_best_baseline")
    if row.get("best_baseline"):
        versus = "best baseline"
    elif paired is None:
        versus = ""
    else:
        mark = " (win)" if paired["win"] and paired["difference"] > 0 else ""
        versus = f"{with_interval(paired['difference'], paired['ci'], signed=True)} vs "
        versus += f"{paired['against']}{mark}"
    swap = row.get("vs_swap")
    return {
        "accuracy [95% CI]": with_interval(row["accuracy"], row["accuracy_ci"]),
        "vs best no-thinking baseline": versus,
        "lrt − lrt-swap": with_interval(swap["difference"], swap["ci"], signed=True)
        if swap
        else "",
    }


def by_steps_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy per number of solution steps, a row per result row (none when the task
    states no steps)."""
    steps = sorted({int(n) for r in rows for n in (r.get("accuracy_by_steps") or {})})
    if not steps:
        return []
    table = []
    for r in rows:
        split = {int(n): v for n, v in (r.get("accuracy_by_steps") or {}).items()}
        cells = {}
        for n in steps:
            cell = split.get(n)
            label = f"{n} step" + ("s" if n != 1 else "")
            cells[label] = f"{percent(cell['accuracy'])} (n={cell['samples']})" if cell else ""
        table.append({k: r[k] for k in ("checkpoint", "mode") if k in r} | cells)
    return table


def held_out_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The short held-out table of a training stage."""
    return [
        {
            "mode": r["mode"],
            "questions": r["questions"],
            **comparison_columns(r),
            "mean tokens": r["mean_tokens"],
            "positions": r["mean_positions"],
            "s/question": r["time_per_question_s"],
        }
        for r in rows
    ]
