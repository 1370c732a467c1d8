"""Reliability (issue 7): exact resume after SIGKILL and SIGTERM, crash-safe checkpoints, the
non-finite guard, and a one-line error for every kind of bad input.

Interrupted runs are `train.py` subprocesses behind a small test-only prelude: it slows each
batch by a fixed sleep (the numbers do not change) so the watcher can signal the run mid-way on
a loaded machine, or makes one checkpoint write die half-way. Reference and resumed runs call
`train.train` in-process on the same overrides, which is what the command line runs, without
paying the interpreter start-up again.
"""

from __future__ import annotations

import csv
import errno
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SUBPROCESS_TIMEOUT_S
from omegaconf import DictConfig

from lrt import train as train_script
from lrt.data.prompt_limit import PromptLimit
from lrt.data.prompts import PromptConfig
from lrt.data.records import Record
from lrt.errors import CheckpointError, LrtError, NonFiniteLossError
from lrt.reasoner import build_reasoner, load_reasoner
from lrt.training.callbacks import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

TINY = [
    "model=tiny_random",
    "reasoner.width=32",
    "reasoner.num_latents=4",
    "stage.batch_size=4",
    "stage.checkpoint_every_n_steps=1",
    "data.val.limit=4",
    "final_eval.enabled=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]
SFT = [
    *TINY,
    "reasoner.dropout=0.1",  # dropout draws from the global RNG: a resume must draw the same
    "stage.max_steps=16",
    "stage.optim.warmup_steps=1",  # then cosine decay over max_steps: a wrong scheduler shows
    "stage.val_every_n_steps=4",
]
GRPO = [
    *TINY,
    "stage=grpo",
    "stage.exploration=latent",  # Gaussian latents (learned sigma) and sampled answer decoding
    "stage.max_steps=16",
    "stage.num_iterations=2",  # two optimiser steps per batch of rollouts
    "stage.batch_size=2",
    "stage.num_generations=4",
    "stage.max_answer_tokens=6",
    "stage.temperature=1.0",  # sampled answers and a format reward: rewards vary within groups,
    "stage.format_reward=1.0",  # so the weights depend on the restored noise generator
    "stage.learn_sigma=true",
    "stage.beta=0.1",
    "stage.optim.lr=1e-2",
    "stage.optim.warmup_steps=1",
    "stage.optim.min_lr_ratio=0.1",
    "stage.val_every_n_steps=4",
    "stage.checkpoint_every_n_steps=2",
    "stage.log_samples_every_n_steps=0",
    "data.train.limit=16",
    "data.val.limit=2",
]


def prelude(sleep_s: float = 0.0, die_at_save: int | None = None) -> str:
    """Python source that runs train.py with each batch slowed by `sleep_s`, and, with
    `die_at_save`, the n-th checkpoint write SIGKILLed when half of its bytes are written."""
    return f"""
import io, os, runpy, signal, sys, time
import torch
from lrt.training.base import StageModule

start = StageModule.on_train_batch_start
def slowed(self, *args):
    time.sleep({sleep_s})
    start(self, *args)
StageModule.on_train_batch_start = slowed

real_save, saves = torch.save, 0
def save(obj, f, *args, **kwargs):
    global saves
    saves += 1
    if saves != {die_at_save}:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: buffer.tell() // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save

sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def last_ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def ckpt_step(run_dir: Path) -> int:
    return torch.load(last_ckpt(run_dir), weights_only=True, mmap=True)["global_step"]


def start(overrides: list[str], run_dir: Path, code: str) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", code, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=(run_dir.parent / f"{run_dir.name}.stderr").open("w"),
    )


def stderr_of(run_dir: Path) -> str:
    return (run_dir.parent / f"{run_dir.name}.stderr").read_text()


def interrupt(overrides: list[str], run_dir: Path, sig: signal.Signals, at_step: int) -> int:
    """Run slowed, send `sig` once `last.ckpt` reaches `at_step`; the exit status."""
    proc = start(overrides, run_dir, prelude(sleep_s=0.3))
    seen, deadline = None, time.monotonic() + SUBPROCESS_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        path = last_ckpt(run_dir)
        stamp = path.stat().st_mtime_ns if path.exists() else None
        if stamp != seen and stamp is not None:
            seen = stamp
            if ckpt_step(run_dir) >= at_step:
                proc.send_signal(sig)
                break
        time.sleep(0.02)
    return proc.wait(timeout=SUBPROCESS_TIMEOUT_S)


def run_in_process(compose: Callable[..., DictConfig], overrides: list[str], run_dir: Path) -> None:
    train_script.run(compose(f"run_dir={run_dir}", *overrides))


def reasoner_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_reasoner(run_dir / "reasoner" / "final").state_dict()


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(resumed: Path, straight: Path) -> None:
    """Reasoner weights within 1e-6 and every logged metric row equal."""
    a, b = reasoner_weights(straight), reasoner_weights(resumed)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    rows_a, rows_b = metrics(straight), metrics(resumed)
    assert [(r["step"], sorted(k for k, v in r.items() if v)) for r in rows_b] == [
        (r["step"], sorted(k for k, v in r.items() if v)) for r in rows_a
    ]
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for key, value in row_a.items():
            if value and not key.endswith("_time_s"):  # wall times differ between any two runs
                assert float(row_b[key]) == pytest.approx(float(value), rel=1e-6), (key, row_a)


# --- exact resume --------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_resumes_exactly_after_torn_write_sigkill_and_sigterm(
    tmp_path: Path, compose_train: Callable[..., DictConfig]
) -> None:
    """One run interrupted three ways, each restart the same command, ends as a straight run.

    1. SIGKILL half-way through writing its third checkpoint (deterministic: the prelude
       writes half the bytes into the temporary file and kills the process): `last.ckpt` is
       still the second, loadable, and the torn file is a temporary beside it.
    2. SIGKILL from outside once `last.ckpt` reaches step 4 (anywhere in a batch or validation).
    3. SIGTERM two steps later: the run writes `last.ckpt` at a batch end and exits with 143.
    """
    straight, run = tmp_path / "straight", tmp_path / "run"
    torn = start(SFT, run, prelude(die_at_save=3))
    run_in_process(compose_train, SFT, straight)
    assert torn.wait(timeout=SUBPROCESS_TIMEOUT_S) == -signal.SIGKILL
    assert ckpt_step(run) == 2
    leftovers = list(last_ckpt(run).parent.glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0

    assert interrupt(SFT, run, signal.SIGKILL, at_step=4) == -signal.SIGKILL
    killed_at = ckpt_step(run)
    assert 4 <= killed_at < 12

    assert interrupt(SFT, run, signal.SIGTERM, at_step=killed_at + 2) == 128 + signal.SIGTERM
    stopped_at = ckpt_step(run)
    assert killed_at + 2 <= stopped_at < 16
    assert stderr_of(run).strip().splitlines()[-1] == (
        f"stopped: SIGTERM at step {stopped_at}: {last_ckpt(run)} written; "
        f"resume with: python train.py resume={run}"
    )
    assert not (run / "reasoner" / "final").exists(), "an interrupted run exported 'final'"

    run_in_process(compose_train, SFT, run)
    assert_same_run(run, straight)


POOL = [
    "stage.dynamic_sampling.enabled=true",
    "stage.dynamic_sampling.max_rounds=2",
    "stage.difficulty.enabled=true",
    "stage.difficulty.patience=1",  # questions cool down, so the pass-rate state matters
    "stage.difficulty.cooldown_steps=2",
]


@pytest.mark.slow
@pytest.mark.parametrize("pool", [[], POOL], ids=["plain", "dynamic_sampling"])
def test_grpo_resumes_exactly_after_sigkill(
    tmp_path: Path, compose_train: Callable[..., DictConfig], pool: list[str]
) -> None:
    init = tmp_path / "init"
    build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 1, "heads": 4}, "tiny-random-qwen3", 64, 0.5
    ).save_pretrained(init)
    overrides = [*GRPO, f"init_from={init}", *pool]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert interrupt(overrides, run, signal.SIGKILL, at_step=2) == -signal.SIGKILL
    killed_at = ckpt_step(run)
    assert 2 <= killed_at < 16
    run_in_process(compose_train, overrides, straight)
    run_in_process(compose_train, overrides, run)
    assert_same_run(run, straight)
    # Rewards varied within a group after the resume point (logged steps count batches of two
    # optimiser steps), so the weights depend on the restored noise generator.
    rows = [r for r in metrics(straight) if r["train/frac_zero_std"]]
    assert any(
        float(r["train/frac_zero_std"]) < 1 for r in rows if int(r["step"]) >= killed_at // 2
    )


def test_ctrl_c_finishes_the_batch_writes_last_ckpt_and_stops(
    tmp_path: Path, compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT mid-step takes SIGTERM's path: no KeyboardInterrupt half-way through a step."""
    from lrt.lm.latent_lm import LatentLM

    real, calls = LatentLM.sft_loss, iter(range(1000))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background

    def sft_loss(self, *args, **kwargs):
        if next(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LatentLM, "sft_loss", sft_loss)
    overrides = [*TINY, "stage.max_steps=8", "stage.val_every_n_steps=100"]
    with pytest.raises(train_script.Stopped) as stop:
        run_in_process(compose_train, overrides, tmp_path)
    assert stop.value.signum == signal.SIGINT
    assert str(stop.value) == (
        f"SIGINT at step 4: {last_ckpt(tmp_path)} written; resume with: "
        f"python train.py resume={tmp_path}"
    )
    assert ckpt_step(tmp_path) == 4
    assert signal.getsignal(signal.SIGINT) is before


def test_a_disk_filling_up_mid_checkpoint_keeps_the_previous_one_loadable(
    tmp_path: Path, compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second checkpoint's write fails half-way with ENOSPC: the run stops with one line
    naming the file, the first checkpoint is intact, and resuming from it finishes the run."""
    real_save, saves = torch.save, []

    def fill_disk(obj, f, *args, **kwargs):
        saves.append(obj["global_step"])
        if len(saves) != 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"\0" * 1024)  # part of the file is written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    overrides = [*SFT, "stage.max_steps=6", "stage.checkpoint_every_n_steps=2"]
    monkeypatch.setattr(torch, "save", fill_disk)
    with pytest.raises(CheckpointError) as err:
        run_in_process(compose_train, overrides, tmp_path)
    assert str(err.value) == (
        f"could not write checkpoint {last_ckpt(tmp_path)}: No space left on device; "
        "the previous one is kept"
    )
    assert sorted(p.name for p in last_ckpt(tmp_path).parent.iterdir()) == ["last.ckpt"]
    assert ckpt_step(tmp_path) == saves[0] == 2
    monkeypatch.setattr(torch, "save", real_save)
    run_in_process(compose_train, overrides, tmp_path)  # resumes from step 2
    assert ckpt_step(tmp_path) == 6


def test_a_run_killed_during_its_final_table_resumes_to_the_table_without_training(
    tmp_path: Path, compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training ended at a step that is no multiple of checkpoint_every_n_steps, and the run
    died while decoding its held-out table: the same command only writes the table."""
    from lrt.training.sft import SFTModule

    overrides = [
        *TINY,
        "stage.max_steps=3",
        "stage.checkpoint_every_n_steps=2",
        "stage.val_every_n_steps=10",
        "final_eval.enabled=true",
        "final_eval.modes=[lrt,direct]",
        "data.test.limit=2",
        "data.max_answer_tokens=4",
    ]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_script, "mode_rows", killed)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(compose_train, overrides, tmp_path)
    trained = reasoner_weights(tmp_path)
    assert not (tmp_path / "final_eval.md").exists()
    monkeypatch.undo()

    def no_training(*args, **kwargs):
        raise AssertionError("the resumed run trained again")

    monkeypatch.setattr(SFTModule, "training_step", no_training)
    run_in_process(compose_train, overrides, tmp_path)
    assert "| lrt |" in (tmp_path / "final_eval.md").read_text()
    assert all(torch.equal(trained[k], v) for k, v in reasoner_weights(tmp_path).items())


def test_checkpoint_write_is_atomic_and_names_the_file_on_failure(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    io.save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "temporary file left"
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(CheckpointError, match="could not write checkpoint .*file/last.ckpt"):
        io.save_checkpoint({"global_step": 3}, blocked / "last.ckpt")


# --- non-finite guard ----------------------------------------------------------------------

GUARDED = [*TINY, "stage.max_steps=6", "stage.val_every_n_steps=100"]


def nan_loss_at(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """Make the SFT loss NaN at these (0-based) training steps."""
    from lrt.lm.latent_lm import LatentLM

    real = LatentLM.sft_loss
    calls = iter(range(1000))

    def sft_loss(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        return loss * math.nan if next(calls) in steps else loss

    monkeypatch.setattr(LatentLM, "sft_loss", sft_loss)


def nan_gradient_at(monkeypatch: pytest.MonkeyPatch, loader: str, backward: int) -> None:
    """Make one reasoner gradient NaN at the `backward`-th backward pass (loss stays finite)."""
    real = getattr(train_script, loader)
    passes = iter(range(1000))

    def build(*args, **kwargs):
        reasoner = real(*args, **kwargs)
        reasoner.f_out.weight.register_hook(
            lambda g: g * math.nan if next(passes) == backward else g
        )
        return reasoner

    monkeypatch.setattr(train_script, loader, build)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    tmp_path: Path, compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_at(monkeypatch, {3})
    with pytest.raises(NonFiniteLossError) as err:
        run_in_process(compose_train, GUARDED, tmp_path)
    assert str(err.value) == (
        "loss is nan at step 3; training stopped and the last checkpoint is kept "
        "(0 such batches skipped, guard.skip_nonfinite=0)"
    )
    ckpt = torch.load(last_ckpt(tmp_path), weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_skip_nonfinite_skips_the_batch_and_continues(
    tmp_path: Path,
    compose_train: Callable[..., DictConfig],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nan_loss_at(monkeypatch, {3})
    with caplog.at_level(logging.WARNING, logger="lrt.training.base"):
        run_in_process(compose_train, [*GUARDED, "guard.skip_nonfinite=1"], tmp_path)
    assert "loss is nan at step 3: batch skipped (1 of guard.skip_nonfinite=1)" in caplog.text
    ckpt = torch.load(last_ckpt(tmp_path), weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["lrt"]["skipped_nonfinite"] == 1
    # AdamW stepped on 5 of the 6 batches: the skipped one left weights and moments alone.
    assert {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()} == {5}
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_nan_gradient_stops_sft_and_grpo(
    tmp_path: Path, compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Automatic optimisation (SFT) and GRPO's manual steps are both guarded."""
    nan_gradient_at(monkeypatch, "build_reasoner", backward=2)
    with pytest.raises(NonFiniteLossError, match=r"^a gradient is not finite at step 2; "):
        run_in_process(compose_train, GUARDED, tmp_path / "sft")

    init = tmp_path / "init"
    build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 1, "heads": 4}, "tiny-random-qwen3", 64, 0.5
    ).save_pretrained(init)
    nan_gradient_at(monkeypatch, "load_reasoner", backward=3)
    grpo = [*GRPO, f"init_from={init}", "stage.max_steps=4", "stage.val_every_n_steps=100"]
    with pytest.raises(NonFiniteLossError, match=r"^a gradient is not finite at step 3; "):
        run_in_process(compose_train, grpo, tmp_path / "grpo")


@pytest.mark.slow
def test_error_inside_fit_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    """A reasoner with a NaN weight (as a corrupted init_from would be) fails in the first
    training step, inside Lightning's fit: train.py still prints one line and exits with 1."""
    reasoner = build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 2, "heads": 4}, "tiny-random-qwen3", 64, 0.5
    )
    with torch.no_grad():
        reasoner.f_out.weight[0, 0] = math.nan
    reasoner.save_pretrained(tmp_path / "nan")
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            *GUARDED,
            f"init_from={tmp_path / 'nan'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: loss is nan at step 0; training stopped and the last checkpoint is kept "
        "(0 such batches skipped, guard.skip_nonfinite=0); resume with: "
        f"python train.py resume={tmp_path / 'run'}"
    )


# --- bad input: one line naming the culprit --------------------------------------------------


@pytest.fixture(scope="module")
def k4_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.ckpt` of a one-step run with K=4 on the tiny base."""
    from hydra import compose, initialize_config_dir

    run = tmp_path_factory.mktemp("k4")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [*TINY, "stage.max_steps=1", f"run_dir={run}"])
    train_script.run(cfg)
    return last_ckpt(run)


def gsm8k_file(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(row + "\n" for row in rows))
    return path


GOOD_ROW = '{"question": "What is 2 + 3?", "answer": "2 + 3 = 5 #### 5"}'
BAD_ROW = '{"question": "What is 2 + 3?", "answer": "five"}'


def case_malformed_row(tmp: Path) -> tuple[list[str], str]:
    bad = gsm8k_file(tmp / "train.jsonl", [GOOD_ROW, BAD_ROW])
    good = gsm8k_file(tmp / "val.jsonl", [GOOD_ROW])
    overrides = ["data=gsm8k_local", f"data.train.path={bad}", "data.val.limit=1"]
    return [*overrides, f"data.test.path={good}"], (
        f"{bad}:2: field 'answer' has no '#### <number>' final answer."
    )


def case_empty_after_filtering(tmp: Path) -> tuple[list[str], str]:
    bad = gsm8k_file(tmp / "train.jsonl", [BAD_ROW, BAD_ROW])
    good = gsm8k_file(tmp / "val.jsonl", [GOOD_ROW])
    overrides = ["data=gsm8k_local", f"data.train.path={bad}", "data.val.limit=1"]
    return [*overrides, f"data.test.path={good}", "data.on_error=skip"], (
        f"No usable rows for task 'gsm8k' split 'train' in {bad}."
    )


def case_corrupt_checkpoint(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "broken.ckpt"
    path.write_bytes(b"PK\x03\x04 half of a checkpoint")
    return [f"ckpt_path={path}"], (
        f"{path} is not a readable Lightning checkpoint: not the zip archive torch.save writes "
        "(truncated, or another format)"
    )


def case_pickled_checkpoint(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "pickled.ckpt"
    torch.save({"lrt": {}, "hook": print}, path)
    return [f"ckpt_path={path}"], (
        f"{path} holds objects other than tensors, which loading with weights_only=True "
        "refuses (Unsupported global: GLOBAL print was not an allowed global by default)"
    )


def case_corrupt_safetensors(tmp: Path) -> tuple[list[str], str]:
    folder = tmp / "reasoner"
    build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 2, "heads": 4}, "tiny-random-qwen3", 64, 0.5
    ).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return [f"init_from={folder}"], f"{weights} is not a readable safetensors file: "


def case_missing_gguf(tmp: Path) -> tuple[list[str], str]:
    return [
        "model.source=gguf",
        f"+model.path={tmp}",
        "+model.gguf_file=model.gguf",
        f"+model.cache_dir={tmp / 'cache'}",  # nothing converted earlier can stand in for it
    ], f"model.gguf_file {tmp / 'model.gguf'} does not exist"


def case_unwritable_run_dir(tmp: Path) -> tuple[list[str], str]:
    blocker = tmp / "a-file"
    blocker.write_text("")
    return [f"run_dir={blocker / 'run'}"], (
        f"run folder {blocker / 'run'} is not writable: Not a directory"
    )


def case_disk_too_full(tmp: Path) -> tuple[list[str], str]:
    return ["guard.min_free_gb=1e9"], f"run folder {tmp / 'run'} has "


def case_missing_data_folder(tmp: Path) -> tuple[list[str], str]:
    data = tmp / "no-data"
    return [f"paths.data_dir={data}", "data=gsm8k_local"], (
        f"data.train.path={data}/gsm8k/train.jsonl does not exist (looked for "
        f"{data}/gsm8k/train.jsonl, and the folder {data} does not exist); set LRT_DATA_DIR to "
        "the folder holding the shared data (gsm8k/, math/, lsat/, ...) or data.train.path to "
        "the file"
    )


def case_prompt_over_context(tmp: Path) -> tuple[list[str], str]:
    return ["model.random_config.max_position_embeddings=64"], ("data.train: record 'arith/")


CASES: dict[str, Callable[[Path], tuple[list[str], str]]] = {
    "malformed row": case_malformed_row,
    "empty after filtering": case_empty_after_filtering,
    "corrupt checkpoint": case_corrupt_checkpoint,
    "pickled checkpoint": case_pickled_checkpoint,
    "corrupt safetensors": case_corrupt_safetensors,
    "missing GGUF file": case_missing_gguf,
    "unwritable run folder": case_unwritable_run_dir,
    "disk too full": case_disk_too_full,
    "missing data folder": case_missing_data_folder,
    "prompt longer than the context": case_prompt_over_context,
    "prompt over max_prompt_tokens": lambda tmp: (
        ["data.max_prompt_tokens=20"],
        "data.train: record 'arith/",
    ),
    "max_prompt_tokens over the context": lambda tmp: (
        ["data.max_prompt_tokens=5000"],
        "data.max_prompt_tokens=5000 does not fit in the model's context, which leaves 2006 "
        "tokens for the prompt",
    ),
    "unknown task": lambda tmp: (["data.task=sudoku"], "data.task='sudoku' is not a known task"),
    "unknown mode": lambda tmp: (
        ["final_eval.enabled=true", "final_eval.modes=[lrt,fast]"],
        "final_eval.modes: unknown mode 'fast'; known modes: lrt, nothink, cot, hybrid",
    ),
    "unknown loss type": lambda tmp: (["stage=grpo", "stage.loss_type=ppo"], "stage.loss_type"),
    "unknown long-prompt policy": lambda tmp: (
        ["data.on_long_prompt=wrap"],
        "data.on_long_prompt='wrap' is not one of ('error', 'truncate')",
    ),
    "zero split limit": lambda tmp: (
        ["data.train.limit=0"],
        "data.train.limit=0 must be a positive integer or null",
    ),
    "unknown exploration": lambda tmp: (
        ["stage=grpo", "stage.exploration=tokens"],
        "stage.exploration='tokens' is not one of ('latent', 'answer', 'both')",
    ),
    "missing reasoner body": lambda tmp: (
        ["reasoner.arch=pretrained", "+reasoner.init_from=/nowhere/body.gguf"],
        "reasoner.init_from=/nowhere/body.gguf does not exist",
    ),
    "record without its SFT target": lambda tmp: (
        [
            "data=openr1_math",
            f"data.train.path={ROOT / 'tests' / 'fixtures' / 'openr1_math.jsonl'}",
            f"data.test.path={ROOT.parent / 'shared' / 'data' / 'math500' / 'test.jsonl'}",
            "data.on_error=raise",
            "data.val.limit=1",
        ],
        "data.prompt.target='response' but record '11111111-aaaa-4bbb-8ccc-000000000003' has "
        "no response text (data.on_error=skip drops such records)",
    ),
    "negative skip budget": lambda tmp: (
        ["guard.skip_nonfinite=-1"],
        "guard.skip_nonfinite=-1 must be a non-negative integer",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_line(
    case: str, tmp_path: Path, compose_train: Callable[..., DictConfig]
) -> None:
    overrides, message = CASES[case](tmp_path)
    with pytest.raises(LrtError) as err:
        run_in_process(compose_train, [*TINY, "stage.max_steps=1", *overrides], tmp_path / "run")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(message), text
    print(f"{case}: {text}")


def test_checkpoint_for_another_k_fails_inside_fit_with_one_line(
    k4_checkpoint: Path, tmp_path: Path, compose_train: Callable[..., DictConfig]
) -> None:
    """Raised by `on_load_checkpoint` inside Lightning's fit, which re-raises it unchanged."""
    run = [*TINY, "stage.max_steps=2", f"ckpt_path={k4_checkpoint}", "reasoner.num_latents=8"]
    with pytest.raises(CheckpointError) as err:
        run_in_process(compose_train, run, tmp_path)
    assert str(err.value) == "checkpoint has num_latents=4, but reasoner.num_latents=8"


def test_checkpoint_for_another_base_fails_before_loading(
    k4_checkpoint: Path,
    tmp_path: Path,
    compose_train: Callable[..., DictConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(train_script, "load_backbone", lambda cfg: pytest.fail("model loaded"))
    run = [*TINY, f"ckpt_path={k4_checkpoint}", "model.name=another-base"]
    with pytest.raises(CheckpointError) as err:
        run_in_process(compose_train, run, tmp_path)
    assert str(err.value) == (
        f"{k4_checkpoint}: checkpoint was trained for base model 'tiny-random-qwen3', "
        "not 'another-base'"
    )


def test_long_prompts_are_truncated_and_counted(
    tiny_backbone, caplog: pytest.LogCaptureFixture
) -> None:
    records = [
        Record("short", "What is 2 + 3?", "5"),
        Record("long", "Start with 4. " + "Add 1. " * 40 + "What is the result?", "44"),
    ]
    tokenizer = tiny_backbone.tokenizer
    limit = PromptLimit(max_tokens=80, on_long="truncate")
    with caplog.at_level(logging.WARNING, logger="lrt.data.datamodule"):
        out = limit.apply(records, tokenizer, PromptConfig(), None, "data.train")
    assert out[0] == records[0]
    assert out[1].question.endswith("What is the result?")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": out[1].question}], tokenize=False, add_generation_prompt=True
    )
    assert len(tokenizer(text, add_special_tokens=False).input_ids) <= 80
    assert "data.train: 1 of 2 prompts were longer than 80 tokens" in caplog.text


def test_the_default_job_needs_no_data_folder(
    tmp_path: Path, compose_train: Callable[..., DictConfig]
) -> None:
    """arith is generated: README command 1 runs where the shared data folder is missing."""
    run_in_process(
        compose_train,
        [*TINY, "stage.max_steps=1", f"paths.data_dir={tmp_path / 'no-data'}"],
        tmp_path / "run",
    )
    assert (tmp_path / "run" / "reasoner" / "final" / "model.safetensors").is_file()
