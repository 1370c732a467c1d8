"""TRL trainer callbacks: the run's `metrics.csv` and the adapter metadata in each checkpoint."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def trainer_callbacks(metrics_csv: Path, base_model: str, meta: Mapping[str, Any]) -> list[Any]:
    """TrainerCallbacks, built here so `transformers` is imported only when training."""
    from transformers import TrainerCallback

    class MetricsCSV(TrainerCallback):
        """Every dict TRL logs, as a row of `<run>/logs/metrics.csv` (the csv logger's file).

        A resumed run keeps the rows up to its checkpoint's step and drops any later ones that
        the interrupted run logged after its last checkpoint.
        """

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if metrics_csv.is_file() and state.global_step > 0:
                with metrics_csv.open(newline="") as f:
                    self.rows = [
                        r for r in csv.DictReader(f) if int(r["step"]) <= state.global_step
                    ]

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any
        ) -> None:
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": state.epoch}
            row |= {k: v for k, v in logs.items() if isinstance(v, int | float | str)}
            self.rows.append(row)
            columns = list(dict.fromkeys(k for r in self.rows for k in r))
            metrics_csv.parent.mkdir(parents=True, exist_ok=True)
            tmp = metrics_csv.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, columns)
                writer.writeheader()
                writer.writerows(self.rows)
            os.replace(tmp, metrics_csv)

    class AdapterMeta(TrainerCallback):
        """`lrt_adapter.json` in every TRL checkpoint, so each is an adapter evaluate.py takes
        and a resume can check the base model."""

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            from lrt.adapter import write_meta

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                write_meta(folder, base_model, step=state.global_step, **meta)

    return [MetricsCSV(), AdapterMeta()]
