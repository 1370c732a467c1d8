"""`evaluate.py paired=[[a, b]]`: paired differences between checkpoints on the same
questions, and a label that names no checkpoint refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrt.errors import ConfigError
from lrt.evaluation.pairs import check_pairs, load_predictions, paired_rows, paired_table


def write(path: Path, checkpoint: str, correct: list[bool], mode: str = "lrt") -> None:
    with path.open("a") as f:
        for i, ok in enumerate(correct):
            row = {
                "checkpoint": checkpoint, "task": "arith", "id": f"q{i}", "mode": mode,
                "text": "", "extracted": None, "correct": ok, "tokens": 1, "positions": 1,
                "after_prompt": 1, "batch_time_s": 0.0, "time_per_question_s": 0.0,
                "ttft_s": 0.0, "truncated": False, "confidence": 0.0,
            }  # fmt: skip
            f.write(json.dumps(row) + "\n")


def test_paired_difference_per_mode_on_the_same_questions(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    write(path, "grpo/final", [True] * 30 + [False] * 10)
    write(path, "sft/final", [True] * 20 + [False] * 20)
    write(path, "sft/final", [True] * 40, mode="lrt-swap")  # no grpo row: not paired
    rows = paired_rows(load_predictions(path), [["grpo/final", "sft/final"]])
    assert len(rows) == 1
    row = rows[0]
    assert (row["mode"], row["questions"]) == ("lrt", 40)
    assert row["difference"] == pytest.approx(0.25) and row["win"] and row["ci"][0] > 0
    assert row["mcnemar_p"] == pytest.approx(2 / 2**10)  # 10 only grpo answers, none only sft
    printed = paired_table(rows)[0]
    assert printed["a accuracy"] == "75.0%" and printed["a − b [95% CI]"].startswith("+25.0")


def test_a_label_that_names_no_checkpoint_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"'grpo/best' is not among \['base', 'sft/final'\]"):
        check_pairs(["base", "sft/final"], [["grpo/best", "sft/final"]])
    with pytest.raises(ConfigError, match="is not a pair"):
        check_pairs(["sft/final"], [["sft/final"]])
