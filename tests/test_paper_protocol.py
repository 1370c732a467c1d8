"""The paper configs as composed: one answer budget per run, and the protocol table of
`docs/paper_protocol.md` checked against the composed configs so the doc cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

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


def protocol_rows() -> list[tuple[str, str, str]]:
    """(composed as, key, value) of each row of docs/paper_protocol.md's table."""
    rows = []
    for line in (ROOT / "docs" / "paper_protocol.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[2].startswith("`"):
            rows.append(tuple(c.strip("`") for c in cells[2:5]))
    return rows


def test_the_protocol_table_is_read() -> None:
    rows = protocol_rows()
    assert len(rows) >= 30
    assert {where.split("=")[0] for where, _, _ in rows} == {"experiment", "evaluate preset"}


@pytest.mark.parametrize(("where", "key", "value"), protocol_rows())
def test_the_protocol_table_matches_the_composed_configs(where: str, key: str, value: str) -> None:
    if where.startswith("evaluate "):
        cfg = compose_eval(where.removeprefix("evaluate "))
    else:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[where], return_hydra_config=True)
    node = OmegaConf.select(cfg, key, throw_on_missing=True)
    actual = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    expected = yaml.safe_load(value)
    if isinstance(actual, dict) and isinstance(expected, list):
        actual = list(actual)  # a group of configs (tasks): its members
    assert actual == expected, f"{where}: {key} is {actual!r}, docs/paper_protocol.md says {value}"
