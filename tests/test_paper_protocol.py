"""The paper configs as composed: one answer budget per run, and the protocol table of
`docs/paper_protocol.md` checked against the composed configs so the doc cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lrt.config import validate_train
from lrt.train import budget_note

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAPER_RUNS = sorted(p.stem for p in (CONF / "experiment").glob("paper_*_*.yaml"))


def compose_eval(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


@pytest.mark.parametrize("experiment", PAPER_RUNS)
def test_a_paper_run_validates_selects_and_is_scored_at_one_budget(
    compose_train, experiment: str
) -> None:
    """Rollouts, validation (which chooses reasoner/best), the final table and `evaluate.py
    preset=paper` decode the same number of answer tokens: a checkpoint chosen on answers cut
    at 512 tokens would be scored on answers of up to 2048."""
    config = validate_train(compose_train(f"experiment={experiment}"))
    budget = config.data.max_answer_tokens
    assert getattr(config.stage, "max_answer_tokens", budget) == budget
    assert budget_note(config) is None
    assert compose_eval("preset=paper").max_answer_tokens == budget


def test_a_run_that_rolls_out_at_another_budget_says_both(compose_train) -> None:
    config = validate_train(
        compose_train("experiment=paper_grpo_qwen3_1_7b", "stage.max_answer_tokens=1024")
    )
    note = budget_note(config)
    assert note is not None and "up to 1024" in note and "up to 2048" in note
