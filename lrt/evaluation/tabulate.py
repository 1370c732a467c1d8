"""One table from results already measured: every `final_eval.json` (a train.py run's held-out
table) and `results.json` (an evaluate.py run) under a folder, with no model loaded.

After `python train.py -m reasoner.num_latents=64,128,256` each job has measured its own
held-out table; `python evaluate.py tabulate=<sweep folder>` puts them side by side with the
overrides that differ between the runs. A file that cannot be read (a job killed while writing
it, a hand edit) is skipped with a warning naming it, and the others are still tabulated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lrt.errors import ConfigError
from lrt.evaluation.discovery import read_overrides, run_folder, swept_keys
from lrt.report import comparison_columns

log = logging.getLogger(__name__)

RESULT_FILES = ("final_eval.json", "results.json")


def _rows_of(path: Path) -> list[dict[str, Any]] | None:
    """The result rows a file holds, or None (with a warning) when it cannot be used."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        log.warning("skipped %s: cannot be read (%s)", path, err)
        return None
    except json.JSONDecodeError as err:
        log.warning("skipped %s: not valid JSON (%s at line %d)", path, err.msg, err.lineno)
        return None
    rows = data.get("results") if isinstance(data, dict) else data
    needed = ("mode", "accuracy", "accuracy_ci", "mean_tokens")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and all(k in r for k in needed) for r in rows
    ):
        log.warning("skipped %s: not a list of result rows with %s", path, ", ".join(needed))
        return None
    return rows


def _row(source: str, overrides: Mapping[str, str], row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "source": source,
        **overrides,
        "checkpoint": row.get("checkpoint", "final"),
        "task": row.get("task", ""),
        "mode": row["mode"],
        "questions": row.get("questions", ""),
        **comparison_columns(dict(row)),
        "mean tokens": row["mean_tokens"],
    }


def tabulate(folder: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of every readable result file under `folder` (hidden folders skipped) and the
    overrides that differ between their runs."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"tabulate={folder} is not a folder")
    files = sorted(
        p
        for name in RESULT_FILES
        for p in root.rglob(name)
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    found = [(p, rows) for p in files if (rows := _rows_of(p)) is not None]
    if not found:
        raise ConfigError(f"tabulate={folder}: no readable {' or '.join(RESULT_FILES)} under it")
    runs = {p: read_overrides(run) if (run := run_folder(p.parent)) else {} for p, _ in found}
    keys = swept_keys(list(runs.values())) if len(found) > 1 else []
    table = [
        _row(str(p.relative_to(root)), {k: runs[p].get(k, "") for k in keys}, row)
        for p, rows in found
        for row in rows
    ]
    return table, keys
