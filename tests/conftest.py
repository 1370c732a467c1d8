"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared benchmark data (override with LRT_DATA_DIR)."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    path = Path(os.environ.get("LRT_DATA_DIR", default))
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set LRT_DATA_DIR)")
    return path
