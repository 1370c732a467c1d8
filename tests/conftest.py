"""Shared pytest fixtures: the shared data folder, a tiny random base and composed configs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from lrt.backbone import Backbone, backbone_config, load_backbone
from lrt.lm.latent_lm import LatentLM
from lrt.reasoner import build_reasoner

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SUBPROCESS_TIMEOUT_S = 240
"""A subprocess of a test is killed after this; the suite's per-test limit (pyproject.toml,
`timeout`) catches whatever else hangs."""


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    """Tiny-model tests are dominated by thread start-up; one thread avoids oversubscription."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared benchmark data (override with LRT_DATA_DIR); its absence is a failure."""
    default = ROOT / ".." / "shared" / "data"
    path = Path(os.environ.get("LRT_DATA_DIR", default))
    assert path.is_dir(), f"shared data folder {path} not found (set LRT_DATA_DIR)"
    return path


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    return load_backbone(backbone_config(OmegaConf.load(CONF / "model" / "tiny_random.yaml")))


def latent_lm(backbone: Backbone, **reasoner: object) -> LatentLM:
    """A small reasoner (K=2, width 32, one block; `reasoner` keys override), seeded, on
    `backbone`: the same weights in every test and every process that builds it."""
    torch.manual_seed(0)
    config = {"num_latents": 2, "width": 32, "depth": 1, "heads": 4, **reasoner}
    built = build_reasoner(config, backbone.name, backbone.hidden_size, backbone.embedding_rms())
    return LatentLM(backbone, built)


@pytest.fixture
def tiny_lm(tiny_backbone: Backbone) -> LatentLM:
    """A fresh reasoner (K=4, width 32) on the shared tiny base."""
    reasoner = build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 2, "heads": 4},
        tiny_backbone.name,
        tiny_backbone.hidden_size,
        tiny_backbone.embedding_rms(),
    )
    return LatentLM(tiny_backbone, reasoner)


@pytest.fixture
def compose_train() -> Callable[..., DictConfig]:
    """Compose `conf/train.yaml` with overrides, without loading any model."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    return _compose


@pytest.fixture(scope="session")
def train_script():
    """`lrt.train`, whose `run(cfg)` is what `train.py` runs (in-process: no interpreter start)."""
    from lrt import train

    return train


@pytest.fixture
def train_in_process(compose_train, train_script) -> Callable[..., None]:
    """Train `overrides` into `run_dir` in this process, as `train.py` would."""

    def _train(run_dir: Path, *overrides: str) -> None:
        train_script.run(compose_train(f"run_dir={run_dir}", *overrides))

    return _train


def run_entry(script: str, *args: str, timeout: float = SUBPROCESS_TIMEOUT_S) -> CompletedProcess:
    """Run `train.py` / `evaluate.py` in a fresh interpreter: one thread (two xdist workers on
    two cores: a second thread each would only oversubscribe them), wandb never online,
    killed after `timeout` seconds (a hang fails the test with `TimeoutExpired`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env |= {"OMP_NUM_THREADS": "1", "NETRC": str(ROOT / ".no-netrc")}  # no wandb login
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_script() -> Callable[..., CompletedProcess]:
    """`run_entry`, as a fixture."""
    return run_entry
