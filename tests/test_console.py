"""What a run shows a user: no warnings or library chatter on a healthy run, a progress bar with
the run's length, and logs and curves for runs of any length."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

TINY = [
    "model=tiny_random",
    "reasoner.width=32",
    "reasoner.num_latents=4",
    "stage.batch_size=4",
    "data.val.limit=4",
    "final_eval.enabled=false",
    "trainer.enable_progress_bar=false",
]
# What the libraries print on a healthy run unless told not to (seen before this was fixed).
NOISE = [
    r"warn",  # any Python warning (FutureWarning, PossibleUserWarning, ...)
    r"Tip: For seamless",  # Lightning's litlogger advertisement
    r"GPU available|TPU available",  # Lightning's device notes
    r"Seed set to",
    r"Loading weights",  # transformers' loading bar
    r"Epoch 0/-2",  # Lightning's epoch label on a step-based run
    r"Modules in eval mode",  # Lightning's model table
    r"`Trainer.fit` stopped",
]


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_default_job_prints_no_warning_and_no_library_chatter(
    tmp_path: Path, run_script
) -> None:
    """README command 1's job (real SmolLM2, every default) for its first 2 steps, with its
    final table on 2 questions."""
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        "stage.max_steps=2",
        "data.val.limit=2",
        "data.test.limit=2",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for stream, text in (("stderr", result.stderr), ("stdout", result.stdout)):
        for line in text.splitlines():
            for pattern in NOISE:
                assert not re.search(pattern, line, re.IGNORECASE), f"{stream}: {line}"
    out = result.stdout
    assert "sft on arith" in out and "frozen and in eval mode" in out  # the summary lines
    assert "sft batches" in out  # the progress bar, labelled by the stage
    assert re.search(r"step 2: validation accuracy \d+\.\d% \(\d+ of 2 questions\)", out)
    for mode in ("lrt", "direct", "nothink", "cot@256"):  # the final table's rows
        assert re.search(rf"[│|] {re.escape(mode)} ", out), out[-2000:]


def test_a_run_shorter_than_its_logging_interval_logs_its_last_step_and_draws_curves(
    tmp_path: Path, compose_train: Callable[..., DictConfig], train_script
) -> None:
    overrides = [*TINY, "stage.max_steps=3", "stage.val_every_n_steps=50"]
    train_script.run(
        compose_train(f"run_dir={tmp_path}", "trainer.log_every_n_steps=10", *overrides)
    )
    rows = metric_rows(tmp_path)
    assert [r["step"] for r in rows if r["train/loss"]] == ["2"]  # Lightning's 0-based step
    assert [r["step"] for r in rows if r["val/accuracy"]] == ["2"]  # the final weights validated
    assert (tmp_path / "train_curves.png").stat().st_size > 0


def test_the_last_step_is_logged_when_the_run_is_not_a_multiple_of_the_interval(
    tmp_path: Path, compose_train: Callable[..., DictConfig], train_script
) -> None:
    overrides = [*TINY, "stage.max_steps=7", "stage.val_every_n_steps=3"]
    train_script.run(
        compose_train(f"run_dir={tmp_path}", "trainer.log_every_n_steps=5", *overrides)
    )
    rows = metric_rows(tmp_path)
    assert [r["step"] for r in rows if r["train/loss"]] == ["4", "6"]
    # Validation every 3 steps, and once more after the last.
    assert [r["step"] for r in rows if r["val/accuracy"]] == ["2", "5", "6"]


def test_no_curves_without_a_logged_step(tmp_path: Path) -> None:
    from lrt.plots import train_curves

    assert train_curves([{"step": "0", "val/accuracy": "0.5"}], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
