"""The shape DESIGN.md section 2 promises: layering checked by import-linter, small modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    """`[tool.importlinter]` in pyproject.toml: no cycles anywhere in lrt/, and the backbone,
    data, grading, reasoner and composition never import training, evaluation or baselines."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "lrt").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert not long, long
