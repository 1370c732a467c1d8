"""Step time of SFT on 2 data-parallel CPU processes against 1, same global batch.

`stage.batch_size` is the global batch, so 2 ranks each run half of it: a step should take
about half as long (plus one all-reduce of the reasoner's gradients). Each configuration is a
real `train.py` run (SmolLM2-135M by default, one thread per process, validation and the final
table off); the step time is the median of `train/step_time_s` after the first steps.

    OMP_NUM_THREADS=1 python bench/data_parallel.py            # 2 cores: 1 process vs DDP x2
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, environment, parser, ratio, write_json


def run(args, label: str, extra: list[str], folder: Path) -> dict:
    run_dir = folder / label.split(",")[0].replace(" ", "_")
    overrides = [
        f"model={args.model}",
        f"stage.max_steps={args.steps}",
        f"stage.batch_size={args.batch}",
        "stage.val_every_n_steps=1000",
        "stage.checkpoint_every_n_steps=1000",
        "final_eval.enabled=false",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"{label} failed:\n{result.stderr[-3000:]}")
    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        times = [float(r["train/step_time_s"]) for r in csv.DictReader(f) if r["train/step_time_s"]]
    steady = times[args.skip :]
    return {
        "label": label,
        "median_step_s": statistics.median(steady),
        "steps_timed": len(steady),
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the median")
    p.add_argument("--batch", type=int, default=16, help="the global batch")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = run(args, "1 process", [], Path(tmp))
        ddp = run(
            args,
            "DDP, 2 processes",
            [
                "trainer=ddp",
                "trainer.accelerator=cpu",
                "trainer.devices=2",
                "trainer.precision=32-true",
            ],
            Path(tmp),
        )
    speedup = ratio(single["median_step_s"], ddp["median_step_s"])
    print(f"SFT, {args.model}, global batch {args.batch}, one thread per process")
    for row in (single, ddp):
        median, n = row["median_step_s"], row["steps_timed"]
        print(f"  {row['label']:<18} {median:.3f} s/step (median of {n})")
    print(f"  1 process / 2 ranks step time: {speedup:.2f}x")
    payload = {"runs": [single, ddp], "speedup": speedup, "env": environment("cpu")}
    write_json(args.out, "data_parallel.json", payload)


if __name__ == "__main__":
    main()
