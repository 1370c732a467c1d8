"""The decode loop's speed paths leave every output as the plain per-row host loop gives it:
answer tokens counted on the device, the host looking every N steps, the close marker
matched by token id."""

from __future__ import annotations

import pytest
import torch
from conftest import latent_lm
from test_latent_lm import PROMPTS

import lrt.lm.decoding
from lrt.backbone import Backbone
from lrt.lm.decoding import Decoder, Generation
from lrt.lm.latent_lm import LatentLM

SETTINGS = {"max_answer_tokens": 8, "budget": 10}


def outputs(gen: Generation) -> tuple:
    return (gen.token_ids, gen.texts, gen.answer_texts, gen.answer_start, gen.num_generated,
            gen.truncated)  # fmt: skip


def assert_same(a: Generation, b: Generation) -> None:
    assert outputs(a) == outputs(b)
    torch.testing.assert_close(a.mean_logprob, b.mean_logprob, equal_nan=True)
    if a.sampled_logprobs is None:
        assert b.sampled_logprobs is None
        return
    assert b.sampled_logprobs is not None
    for x, y in zip(a.sampled_logprobs, b.sampled_logprobs, strict=True):
        torch.testing.assert_close(torch.tensor(x), torch.tensor(y), equal_nan=True)


@pytest.fixture
def stopping_lm(tiny_backbone: Backbone) -> LatentLM:
    """A seeded reasoner, and a tenth of the byte vocabulary ending an answer: rows stop at
    different steps, and some run out of budget."""
    lm = latent_lm(tiny_backbone, num_latents=4)
    lm.eos_ids = [*lm.eos_ids, *range(0, 256, 25)]
    return lm


@pytest.mark.parametrize("mode", ["lrt", "nothink", "cot", "cot, plain-text marker"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_kept_on_the_device_equal_the_host_steps(
    stopping_lm: LatentLM, monkeypatch: pytest.MonkeyPatch, mode: str, temperature: float
) -> None:
    """Every output of the device path equals `_step` run on the host per row: from the first
    step (`lrt`, `nothink`, and `cot` with a one-token close marker: EOS in the thinking, the
    close, the budget and the forced tokens included), or from the step the last row left its
    thinking (`cot` with a marker that must be read as text)."""
    if mode == "cot, plain-text marker":
        monkeypatch.setattr(stopping_lm.tokenizer, "get_added_vocab", dict)
        mode = "cot"
    prefix = stopping_lm.encode(*stopping_lm.tokenize_prompts(PROMPTS * 3))
    device = stopping_lm.generate(prefix, mode, temperature=temperature, **SETTINGS)
    monkeypatch.setattr(Decoder, "host_steps", True)
    host = stopping_lm.generate(prefix, mode, temperature=temperature, **SETTINGS)
    assert_same(device, host)
    lengths = {
        len(row) - start for row, start in zip(host.token_ids, host.answer_start, strict=True)
    }
    assert len(lengths) > 1 and any(host.truncated) and not all(host.truncated)


def test_the_host_looks_every_n_steps_and_changes_nothing(
    stopping_lm: LatentLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With looks every 3 steps the ranks' vote (`all_done`) is taken at steps 3, 6, ... only,
    the finished rows leave the batch only then, and the answers are those of looking at
    every step."""
    prefix = stopping_lm.encode(*stopping_lm.tokenize_prompts(PROMPTS * 3))
    votes: list[bool] = []

    def all_done(done: bool) -> bool:
        votes.append(done)
        return done

    every_step = stopping_lm.generate(prefix, "lrt", temperature=1.0, all_done=all_done, **SETTINGS)
    steps = len(votes)
    votes.clear()
    monkeypatch.setattr(lrt.lm.decoding, "SYNC_EVERY", {"cpu": 3})
    every_third = stopping_lm.generate(
        prefix, "lrt", temperature=1.0, all_done=all_done, **SETTINGS
    )
    assert_same(every_third, every_step)
    max_steps = SETTINGS["max_answer_tokens"]  # the loop also ends at the budget
    assert len(votes) == min(-(-steps // 3), max_steps // 3) < steps


def test_a_close_marker_that_is_one_token_is_matched_by_id(
    tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny tokenizer holds `</think>` as an added token, like Qwen3's: `cot` keeps its
    rows on the device, matching the marker's id (no row's text is read while thinking), and
    leaves the span where a text search of every tail on the host does."""
    tiny_lm = latent_lm(tiny_backbone, num_latents=4)
    prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts(PROMPTS * 3))
    close = tiny_lm.tokenizer.convert_tokens_to_ids("</think>")
    sample = lrt.lm.decoding.sample_tokens
    step = {"t": 0}

    def closing(logits: torch.Tensor, *args: object) -> torch.Tensor:
        tokens = sample(logits, *args)
        step["t"] += 1
        if step["t"] == 3:  # the first row writes the marker at its third token
            tokens[0] = close
        return tokens

    monkeypatch.setattr(lrt.lm.decoding, "sample_tokens", closing)
    looked: list[int] = []
    closes = Decoder._closes
    monkeypatch.setattr(Decoder, "_closes", lambda *a: looked.append(1) or closes(*a))
    fast = tiny_lm.generate(prefix, "cot", temperature=1.0, **SETTINGS)
    assert looked == [] and fast.answer_start[0] == 3

    def every_tail(self: Decoder, i: int, token: int) -> bool:
        looked.append(1)
        return self.close_text in self.lm.tokenizer.decode(self.tokens[i][-8:])

    step["t"] = 0
    monkeypatch.setattr(Decoder, "_closes", every_tail)
    monkeypatch.setattr(Decoder, "host_steps", True)
    slow = tiny_lm.generate(prefix, "cot", temperature=1.0, **SETTINGS)
    assert len(looked) > 10
    assert_same(fast, slow)
