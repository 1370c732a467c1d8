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
