"""Data parallelism (DESIGN.md section 6): `stage.batch_size` is the global batch, each rank
takes its own slice, and N ranks (DDP or FSDP) end with the weights one process reaches.

The end-to-end runs are `train.py` subprocesses on 2 gloo CPU processes against one process of
the same config; global batches that do not divide evenly, answers of different lengths and
validation and test sets that do not split evenly are all chosen on purpose.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lrt.backbone import tiny_tokenizer
from lrt.data.datamodule import LRTDataModule
from lrt.data.samplers import ShardedEvalSampler, StepBatchSampler, shard
from lrt.data.settings import DataConfig
from lrt.reasoner import build_reasoner, load_reasoner
from lrt.schema import typed
from lrt.training.step_metrics import LossStats

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny_random",
    "reasoner.width=32",
    "reasoner.num_latents=2",
    # The questions these comparisons were calibrated on: on the default's smaller amounts, one
    # of the 96 weights of a GRPO case ends 1.1e-5 from the 1-process value (relative 1.7: a
    # weight near zero, where Adam magnifies rounding differences), just past the tolerance.
    "data.options.max_amount=30",
    "data.options.max_factor=5",
    "stage.batch_size=5",  # 3 + 2 questions on 2 ranks
    "stage.max_steps=3",
    "stage.val_every_n_steps=2",
    "stage.checkpoint_every_n_steps=1",
    "data.val.limit=3",
    "data.test.limit=3",
    "data.max_answer_tokens=3",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",  # a metrics row per step, compared between the runs
    # Float tolerance needs float arithmetic: the CPU default's bf16-mixed rounds each matmul
    # to 8 bits of mantissa, far past it, differently for each split of the batch.
    "trainer.precision=32-true",
    # Attention key biases have a zero gradient in exact arithmetic; Adam with its default eps
    # of 1e-8 would turn their 1e-10 rounding noise, which differs with the batch's split,
    # into updates of 1e-5. A larger eps keeps the comparison about the sharding.
    "stage.optim.eps=1e-6",
]
TWO_RANKS = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]


def test_shards_are_disjoint_and_cover_the_items_in_order() -> None:
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard(items, 0, 1) == items


def test_two_ranks_see_each_question_of_the_global_batch_once() -> None:
    """At every step the ranks' batches are disjoint and together are the global batch that
    one process draws, with each question's slot (its place in the global batch)."""
    tokenizer = tiny_tokenizer()
    data_cfg = OmegaConf.load(ROOT / "conf" / "data" / "arith.yaml")
    data_cfg.train.limit = 40

    def batches(rank: int, world_size: int) -> list[list[tuple[int, int]]]:
        data = LRTDataModule(typed(DataConfig, data_cfg, "data"), tokenizer, None, 5, seed=3)
        data.setup()
        module = SimpleNamespace(batches_done=lambda: 2, total_batches=lambda: 12)
        data.trainer = SimpleNamespace(
            global_rank=rank, world_size=world_size, lightning_module=module
        )
        loader = data.train_dataloader()
        return [list(zip(b["index"].tolist(), b["slot"].tolist(), strict=True)) for b in loader]

    single = batches(0, 1)
    rank0, rank1 = batches(0, 2), batches(1, 2)
    assert len(single) == len(rank0) == len(rank1) == 10  # steps 2..11
    for whole, a, b in zip(single, rank0, rank1, strict=True):
        assert len(a) == len(b) == 3  # the shorter slice is padded: FSDP needs equal work
        assert b[-1] == (b[-2][0], -1)  # by its last question again, as slot -1 (no loss)
        assert a + b[:-1] == whole
        assert [slot for _, slot in whole] == list(range(5))
    with pytest.raises(Exception, match="stage.batch_size=1 is the global batch"):
        StepBatchSampler(10, 1, 0, 0, 1, rank=0, world_size=2)


def test_evaluation_shards_run_the_same_batches_on_every_rank() -> None:
    shards = [list(ShardedEvalSampler(5, 2, rank, 2)) for rank in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    assert [[len(b) for b in s] for s in shards] == [[2, 1], [2, 1]]
    real = [key for s in shards for b in s for key in b if key[1] >= 0]
    assert sorted(real) == [(i, i) for i in range(5)]
    assert shards[1][-1] == [(4, -1)]  # padding repeats the shard's last record, not counted


def test_validation_batches_have_their_own_width() -> None:
    """`stage.val_batch_size` sets how many validation questions a rank decodes together,
    apart from the training batch (null: the training batch, as before)."""
    data_cfg = OmegaConf.load(ROOT / "conf" / "data" / "arith.yaml")
    data_cfg.train.limit, data_cfg.val.limit = 10, 10
    config = typed(DataConfig, data_cfg, "data")

    def widths(**width: int) -> list[int]:
        data = LRTDataModule(config, tiny_tokenizer(), None, 2, **width)
        data.setup()
        data.trainer = SimpleNamespace(global_rank=0, world_size=1)
        return [len(b["index"]) for b in data.val_dataloader()]

    assert widths(val_batch_size=8) == [8, 2]
    assert widths() == [2] * 5


def test_loss_statistics_weigh_chunks_by_their_tokens() -> None:
    """A step's clip fraction is over every counted token of its chunks, so cutting a batch
    differently (ranks, micro-batches, a rank's token-free placeholder under dynamic sampling)
    leaves it unchanged; the mean of the chunks' own fractions would not (here 1/6)."""
    stats = LossStats()
    stats.add({"clip_frac": torch.tensor(0.5), "logratio_max": torch.tensor(1e-6)}, torch.tensor(4))
    stats.add({"clip_frac": torch.tensor(0.0), "logratio_max": torch.tensor(0.0)}, torch.tensor(0))
    stats.add({"clip_frac": torch.tensor(0.0), "logratio_max": torch.tensor(3e-6)}, torch.tensor(4))
    total, tokens = stats.sums["clip_frac"]
    assert (total, tokens) == (2.0, 8.0)
    assert stats.maxima == {"logratio_max": pytest.approx(3e-6)}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_reasoner(run_dir / "reasoner" / "final").state_dict()


def initial_reasoner(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A saved starting reasoner, so both runs start from it and the test can check that
    training moved the weights (else an equality would be empty)."""
    torch.manual_seed(0)
    reasoner = build_reasoner(
        {"num_latents": 2, "width": 32, "depth": 1, "heads": 4}, "tiny-random-qwen3", 64, 0.1
    )
    return reasoner.save_pretrained(tmp_path / "init"), reasoner.state_dict()


def run_pair(
    tmp_path: Path,
    run_script,
    train_in_process,
    overrides: list[str],
    multi: list[str],
    stop_at: int | None = None,
) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """The same config in one process (in this one: no interpreter to start) and on 2 gloo
    processes (`multi` added); with `stop_at`, the 2-rank run stops after that step and is
    resumed by the same command to its end, so the comparison also covers a resume."""
    init, start = initial_reasoner(tmp_path)
    single, many = tmp_path / "single", tmp_path / "multi"
    common = [*overrides, f"init_from={init}"]
    train_in_process(single, *common)
    two_ranks = ["train.py", *common, *multi, *TWO_RANKS, f"hydra.run.dir={many}"]
    if stop_at is not None:
        result = run_script(*two_ranks, f"stage.max_steps={stop_at}", "final_eval.enabled=false")
        assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(*two_ranks)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = result.stdout + result.stderr  # Hydra's job logging goes to stdout
    assert logs.count("reasoner weights identical on 2 ranks") == 2, logs[-3000:]
    assert (stop_at is not None) == ("resuming from" in logs)
    return single, many, start


def held_out(run_dir: Path) -> list[dict]:
    """The final table's rows without wall times (which differ between any two runs), and the
    latents' spread to 4 decimals (the weights agree to 1e-5, not to the last bit)."""
    rows = json.loads((run_dir / "final_eval.json").read_text())
    return [
        {
            k: round(v, 4) if k == "latent_spread" and v is not None else v
            for k, v in r.items()
            if not k.endswith("_s")
        }
        for r in rows
    ]


def assert_same_weights(got_run: Path, want_run: Path, start: dict[str, torch.Tensor]) -> None:
    got, want = weights(got_run), weights(want_run)
    moved = max((want[k] - start[k]).abs().max().item() for k in want)
    assert moved > 1e-3, "training did not move the weights: the comparison would be empty"
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0)


def train_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The training rows of the run's `metrics.csv` (the CSV logger's): every `train/*` value
    but wall times, with the step."""
    with (run_dir / "logs" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        values = {
            k: float(v)
            for k, v in row.items()
            if k.startswith("train/") and not k.endswith("_s") and v != ""
        }
        if values:
            out.append({"step": float(row["step"]), **values})
    return out


def assert_same_metrics(got_run: Path, want_run: Path) -> None:
    """Both runs logged the same training metrics at every step (`log_every_n_steps=1`)."""
    got, want = train_metrics(got_run), train_metrics(want_run)
    assert len(want) == 3, want  # one row per step
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for got_row, want_row in zip(got, want, strict=True):
        for key, value in want_row.items():
            assert got_row[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (
                f"{key} at step {want_row['step']:.0f}: {got_row[key]} on 2 ranks, {value} in one"
            )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_rank_sft_ends_with_the_single_process_weights(
    tmp_path: Path, run_script, train_in_process, strategy: str
) -> None:
    """DDP, and FSDP (FSDP2: base layers and reasoner sharded), on 2 gloo processes with
    micro-batches of one question reach the weights of one process on the whole batch, and
    print the same held-out table (decoded in shards, gathered). The FSDP run is stopped after
    step 2 and resumed to 3: FSDP loads the full-state checkpoint into the shards."""
    single, multi, start = run_pair(
        tmp_path,
        run_script,
        train_in_process,
        TINY,
        [f"trainer={strategy}", "stage.micro_batch_size=1"],
        stop_at=2 if strategy == "fsdp" else None,
    )
    assert_same_weights(multi, single, start)
    assert_same_metrics(multi, single)
    assert held_out(multi) == held_out(single)
    assert (multi / "reasoner" / "best" / "model.safetensors").is_file()


POOL = [
    "stage.dynamic_sampling.enabled=true",
    "stage.dynamic_sampling.round_size=3",
    "stage.dynamic_sampling.max_rounds=2",
    "stage.difficulty.enabled=true",
    "stage.difficulty.patience=1",
]
"""Dynamic sampling and difficulty order: rounds, filtering and pass rates decided globally."""


@pytest.mark.slow
@pytest.mark.parametrize("pool", [[], POOL], ids=["plain", "dynamic_sampling"])
def test_two_rank_grpo_ends_with_the_single_process_weights(
    tmp_path: Path, run_script, train_in_process, pool: list[str]
) -> None:
    """Latent GRPO on 2 ranks: each question's noise is keyed by its slot in the global
    batch, so the ranks draw what one process draws, and the loss is the global mean; with
    dynamic sampling, each round's outcomes are gathered so every rank keeps the same groups."""
    grpo = [
        *TINY,
        "stage=grpo",
        "stage.exploration=latent",
        "stage.temperature=0",  # greedy answers: all the randomness is the keyed latent noise
        "stage.batch_size=3",  # 2 + 1 questions
        "stage.num_generations=3",
        "stage.max_answer_tokens=4",
        "stage.sigma_scale=1.0",
        "stage.format_reward=1.0",  # rewards that vary within groups on a random model
        "stage.optim.lr=1e-2",
        "data.train.limit=12",
        "final_eval.enabled=false",
        *pool,
    ]
    single, multi, start = run_pair(tmp_path, run_script, train_in_process, grpo, ["trainer=ddp"])
    assert_same_weights(multi, single, start)
    assert_same_metrics(multi, single)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_rank_answer_grpo_matches_one_process(
    tmp_path: Path, run_script, train_in_process, strategy: str
) -> None:
    """Answer-mode GRPO (sampled answers, gradients through the frozen base into the latents)
    with dynamic sampling, on 2 gloo ranks under DDP and FSDP2: 3 steps end with the weights of
    one process on the same global batch, and every logged train metric agrees row by row.

    Each answer token's uniform is keyed by its question's slot in the global round and its
    sample number, so the ranks sample what one process samples; the metrics are sums and
    counts over every rank (rank 0 alone logged 0.577 for a reward std of 0.516, and NaN means
    at a step where it kept no group). Measured: the weights end at most 2.5e-6 (DDP) and
    2.3e-6 (FSDP2) from one process's, inside `assert_same_weights`' 1e-5.
    """
    grpo = [
        *TINY,
        "stage=grpo",
        "stage.exploration=answer",
        "stage.temperature=1.0",
        "stage.batch_size=3",  # 2 + 1 questions per round, a padding row on rank 1
        "stage.num_generations=3",
        "stage.max_answer_tokens=4",
        "stage.format_reward=1.0",  # rewards that vary within groups on a random model
        "stage.optim.lr=1e-2",
        "stage.val_at_start=false",
        "data.train.limit=12",
        "final_eval.enabled=false",
        "stage.dynamic_sampling.enabled=true",
        "stage.dynamic_sampling.round_size=3",
        "stage.dynamic_sampling.max_rounds=2",
    ]
    single, multi, start = run_pair(
        tmp_path, run_script, train_in_process, grpo, [f"trainer={strategy}"]
    )
    assert_same_weights(multi, single, start)
    assert_same_metrics(multi, single)
