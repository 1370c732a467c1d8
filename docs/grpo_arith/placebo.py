"""GRPO with placebo rewards: `train.py` with each rollout's reward a coin flip (p=0.6, seeded)
instead of the grader's verdict, every other setting as given on the command line.

The steps then carry the optimiser's noise and none of the task's signal: a held-out accuracy
that falls as far under placebo rewards as under real ones says the fall is the update noise,
not what the reward teaches (docs/grpo_arith/README.md, "Diagnosis").

    python docs/grpo_arith/placebo.py stage=grpo init_from=<sft reasoner> [overrides...]
"""

from __future__ import annotations

import random
import runpy
import sys
from pathlib import Path

from lrt.training import grpo

ROOT = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    coin = random.Random(0)
    grpo.grade = lambda task, text, record: coin.random() < 0.6  # type: ignore[assignment]
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
