"""Evaluate reasoners: `python evaluate.py [checkpoints=<path>] [tasks=[...]] [modes=[...]] ...`.

Loads the frozen backbone and every reasoner found under `checkpoints` / `sweep_dir` (a
reasoner folder, a Lightning `.ckpt`, a train.py run folder or a Hydra sweep folder), runs each
task's test split in each mode and writes `results.json`, `predictions.jsonl`, `results.md`
and `pareto.png` (plus `sweep.md` and `sweep.png` with `sweep_dir`) to the output folder. See
`conf/evaluate.yaml` for every key and `lrt/evaluation/` for what is measured.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from lrt.errors import LrtError
from lrt.evaluation import evaluate

log = logging.getLogger("lrt.evaluate")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except LrtError as err:
        log.error("%s", err)
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
