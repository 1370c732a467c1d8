"""Thinking modes are graded on the answer after the thinking span, never on the thinking.

The tiny random model cannot be made to write `\\boxed{42}` while thinking, so these tests
script the tokens it samples (`lrt.lm.decoding.sample_tokens`) and run everything else for real:
the decoder's budget forcing and close detection, `predict`'s grading, hybrid's routing, STIR's
steered decoder and its mining rollouts.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lrt.backbone import Backbone
from lrt.baselines.stir.decode import SteeredLM
from lrt.baselines.stir.library import Library
from lrt.baselines.stir.rollouts import sample_rollouts
from lrt.data.prompts import PromptConfig
from lrt.data.records import Record
from lrt.evaluation import Prediction, predict
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig

BUDGET = 24
FORCE = "The answer is"
GOLD = Record("q", "What is 6 times 7?", "42")
Install = Callable[[list[int]], None]


class Script:
    """Stands in for `sample_tokens`: each call is one decoding step and returns the next
    scripted token for every row still decoding (EOS once the script is spent)."""

    def __init__(self, ids: list[int], eos: int) -> None:
        self.ids = ids
        self.eos = eos
        self.step = 0

    def __call__(
        self, logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None
    ) -> torch.Tensor:
        token = self.ids[self.step] if self.step < len(self.ids) else self.eos
        self.step += 1
        return torch.full((logits.shape[0],), token, dtype=torch.long, device=logits.device)


def ids(lm: LatentLM, text: str) -> list[int]:
    return lm._ids(text).tolist()


def forced(lm: LatentLM, thinking: str, answer: str) -> list[int]:
    """`thinking` padded to exactly the budget, the steps the forced close marker and answer
    prefix take (what is sampled there is ignored), then `answer`."""
    think = ids(lm, thinking.ljust(BUDGET))
    assert len(think) == BUDGET, "the byte-level tokenizer: one token per character"
    return think + [0] * len(ids(lm, lm.backbone.config.think_close + FORCE)) + ids(lm, answer)


def ended(lm: LatentLM, thinking: str, answer: str) -> list[int]:
    """`thinking`, then EOS inside the span: the forced close marker and answer prefix take that
    step and the next ones (what is sampled there is ignored), then `answer`."""
    steps = len(ids(lm, lm.backbone.config.think_close + FORCE))
    return ids(lm, thinking) + [lm.eos_ids[0]] + [0] * (steps - 1) + ids(lm, answer)


def plans(lm: LatentLM) -> dict[str, tuple[list[int], bool, str | None]]:
    """Script, whether it is graded correct (gold 42), and the answer extracted."""
    close = lm.backbone.config.think_close
    return {
        # A \boxed{42} inside the thinking is not the answer the model gave after it.
        "forced, boxed in thinking": (forced(lm, "so \\boxed{42} then", " 7"), False, "7"),
        "forced, nothing after": (forced(lm, "so \\boxed{42} then", ""), False, None),
        "forced, right after": (forced(lm, "so \\boxed{7} then", " 42"), True, "42"),
        "closed, boxed in thinking": (ids(lm, "\\boxed{42}" + close + "7"), False, "7"),
        "closed, right after": (ids(lm, "\\boxed{7}" + close + "42"), True, "42"),
        # Ended (EOS) inside the span: forced there; only what follows the marker counts.
        "ended in thinking, nothing after": (ids(lm, "\\boxed{42}"), False, None),
        "ended in thinking, right after": (ended(lm, "\\boxed{7}", " 42"), True, "42"),
    }


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch, tiny_lm: LatentLM) -> Install:
    """`install(ids)` makes the decoder sample `ids`."""

    def install(tokens: list[int]) -> None:
        monkeypatch.setattr("lrt.lm.decoding.sample_tokens", Script(tokens, tiny_lm.eos_ids[0]))

    return install


def answer(lm: LatentLM, mode: str) -> Prediction:
    settings = DecodeConfig(max_answer_tokens=8, force_answer=FORCE)
    [pred] = predict(lm, "arith", [GOLD], PromptConfig(), f"{mode}@{BUDGET}", settings)
    return pred


def empty_stir(backbone: Backbone) -> SteeredLM:
    meta = {"base_model": backbone.name, "delimiter": "\n\n", "control_points": 3,
            "online": {}, "questions": []}  # fmt: skip
    return SteeredLM(backbone, Library.from_pairs([], backbone.hidden_size, meta))


@pytest.mark.parametrize("mode", ["cot", "hybrid", "stir"])
def test_only_the_answer_after_the_thinking_span_is_graded(
    mode: str, tiny_lm: LatentLM, script: Install
) -> None:
    lm = empty_stir(tiny_lm.backbone) if mode == "stir" else tiny_lm
    for case, (tokens, correct, extracted) in plans(lm).items():
        # hybrid's latent attempt answers EOS at once (no confidence), so it is redone by cot
        script([lm.eos_ids[0], *tokens] if mode == "hybrid" else tokens)
        pred = answer(lm, mode)
        assert (pred.correct, pred.extracted) == (correct, extracted), case
        assert "\\boxed{" in pred.text, f"{case}: the text keeps the thinking, for inspection"
        if mode == "hybrid":
            assert pred.route == "cot", case


def test_the_generation_marks_where_the_answer_starts(tiny_lm: LatentLM, script: Install) -> None:
    prompt = tiny_lm.encode(*tiny_lm.tokenize_prompts(["6 times 7?"]))
    close = tiny_lm.backbone.config.think_close
    until_close = len(ids(tiny_lm, "\\boxed{42}" + close.rstrip()))  # through `</think>`
    cases = {
        "forced": (forced(tiny_lm, "so \\boxed{42} then", " 7"), BUDGET, f"{FORCE} 7"),
        "closed": (ids(tiny_lm, "\\boxed{42}" + close + "7"), until_close, "7"),
        "ended in thinking": (ids(tiny_lm, "\\boxed{42}"), len("\\boxed{42}"), FORCE),
    }
    for case, (tokens, start, text) in cases.items():
        script(tokens)
        gen = tiny_lm.generate(
            prompt, "cot", max_answer_tokens=8, budget=BUDGET, force_answer=FORCE
        )
        assert (gen.answer_start, gen.answer_texts) == ([start], [text]), case
        assert gen.select([0]).answer_texts == [text]


def test_stir_mining_rewards_the_answer_not_the_thinking(
    tiny_lm: LatentLM, script: Install
) -> None:
    """STIR's rollouts are `cot` decodes too: their reward reads the same answer part."""
    for case, (tokens, correct, _) in plans(tiny_lm).items():
        script(tokens)
        [[rollout]] = sample_rollouts(
            tiny_lm, "arith", [GOLD], [0], PromptConfig(), k=1, temperature=0.0, top_p=1.0,
            t_max=BUDGET, eta=0.1, max_answer_tokens=8, delimiter="\n\n", seed=0,
        )  # fmt: skip
        assert rollout.correct == correct, case


def test_stir_segments_end_in_the_thinking_of_a_row_forced_where_it_ended(
    tiny_lm: LatentLM, script: Install
) -> None:
    """A row that ends inside its thinking is forced there: its segments end in its thinking,
    never in the forced answer that follows (which holds a delimiter here)."""
    thinking = "x\n\ny"
    script(ended(tiny_lm, thinking, " 42\n\nz"))
    [[rollout]] = sample_rollouts(
        tiny_lm, "arith", [GOLD], [0], PromptConfig(), k=1, temperature=0.0, top_p=1.0,
        t_max=BUDGET, eta=0.1, max_answer_tokens=8, delimiter="\n\n", seed=0,
    )  # fmt: skip
    assert rollout.correct
    assert len(rollout.ends) == 1 and rollout.ends[0] < len(ids(tiny_lm, thinking))
