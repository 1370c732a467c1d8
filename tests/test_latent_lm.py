"""Composition of base and reasoner: gradients, cached-prefix exactness, padding invariance."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lrt.lm.decoding import Decoder
from lrt.lm.latent_lm import LatentLM

PROMPTS = [
    "<|im_start|>user\nStart with 4. Add 13.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 7?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nStart with 12. Multiply by 3. Add 1. Result?<|im_end|>\n"
    "<|im_start|>assistant\n",
]
ANSWERS = ["The answer is 17.", "7", "The answer is 37."]


def test_gradients_reach_reasoner_only(tiny_lm: LatentLM) -> None:
    ids, mask = tiny_lm.tokenize_prompts(PROMPTS)
    loss = tiny_lm.sft_loss(ids, mask, *tiny_lm.tokenize_answers(ANSWERS))
    loss.backward()
    assert all(p.grad is None for p in tiny_lm.base.parameters())
    for name, p in tiny_lm.reasoner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cached_prefix_loss_equals_full_sequence_pass(tiny_lm: LatentLM) -> None:
    """NLL on top of the prompt cache == one pass over [prompt, markers, Z, answer]."""
    for prompt, answer in zip(PROMPTS, ANSWERS, strict=True):
        ids, mask = tiny_lm.tokenize_prompts([prompt])
        ans, ans_mask = tiny_lm.tokenize_answers([answer])
        cached = tiny_lm.sft_loss(ids, mask, ans, ans_mask)

        prefix = tiny_lm.encode(ids, mask)
        z = tiny_lm.reason(prefix)
        embeds = torch.cat(
            [
                tiny_lm.backbone.embed(ids),
                tiny_lm.thinking_embeds(z, 1),
                tiny_lm.backbone.embed(ans),
            ],
            dim=1,
        )
        logits = tiny_lm.base(inputs_embeds=embeds).logits
        first = embeds.shape[1] - ans.shape[1] - 1
        pred = logits[:, first : first + ans.shape[1]]
        full = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), ans.reshape(-1))
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_padding_never_changes_a_row(tiny_lm: LatentLM) -> None:
    ids, mask = tiny_lm.tokenize_prompts(PROMPTS)
    assert (mask == 0).any(), "the batch must actually be padded"
    ans, ans_mask = tiny_lm.tokenize_answers(ANSWERS)
    prefix = tiny_lm.encode(ids, mask)
    batch_logp = tiny_lm.answer_logprobs(prefix.fork(), tiny_lm.reason(prefix), ans, ans_mask)
    batch_gen = tiny_lm.generate(prefix, "lrt", max_answer_tokens=6)
    assert len({tuple(t) for t in batch_gen.token_ids}) > 1, "degenerate model: test is vacuous"
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        one_prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts([prompt]))
        one_ans, one_mask = tiny_lm.tokenize_answers([answer])
        alone = tiny_lm.answer_logprobs(
            one_prefix.fork(), tiny_lm.reason(one_prefix), one_ans, one_mask
        )
        torch.testing.assert_close(
            batch_logp[i, : one_ans.shape[1]].sum(), alone.sum(), atol=1e-5, rtol=0
        )
        assert (
            tiny_lm.generate(one_prefix, "lrt", max_answer_tokens=6).token_ids[0]
            == (batch_gen.token_ids[i])
        )


def test_generate_leaves_prefix_reusable(tiny_lm: LatentLM) -> None:
    prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts(PROMPTS))
    length = prefix.cache.get_seq_length()
    first = tiny_lm.generate(prefix, "lrt", max_answer_tokens=5)
    assert prefix.cache.get_seq_length() == length
    assert tiny_lm.generate(prefix, "lrt", max_answer_tokens=5).token_ids == first.token_ids


def test_nothink_and_lrt_differ_only_by_latents(tiny_lm: LatentLM) -> None:
    prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts(PROMPTS[:1]))
    k = tiny_lm.reasoner.num_latents
    span = tiny_lm.thinking_embeds(tiny_lm.reason(prefix), 1)
    empty = tiny_lm.thinking_embeds(None, 1)
    assert span.shape[1] == empty.shape[1] + k
    n_open = tiny_lm.open_ids.numel()
    torch.testing.assert_close(span[:, :n_open], empty[:, :n_open])
    torch.testing.assert_close(span[:, n_open + k :], empty[:, n_open:])


TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


@pytest.mark.parametrize("template", ["deepseek_r1_distill", "qwen3"])
def test_thinking_span_is_opened_exactly_once(tiny_lm: LatentLM, template: str) -> None:
    """DeepSeek-R1-Distill's published template ends its generation prompt with `<think>\\n`;
    Qwen3's does not. Either way every mode, and the grpo_cot prompt, hold the marker once."""
    from lrt.baselines.grpo_cot.trl_setup import cot_prompt

    tokenizer = copy.deepcopy(tiny_lm.tokenizer)
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text()
    lm = LatentLM(tiny_lm.backbone, tiny_lm.reasoner)
    lm.tokenizer = tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<think>\n") == (template == "deepseek_r1_distill")
    prefix = lm.encode(*lm.tokenize_prompts([text]))
    prompt_ids = lm.tokenize_prompts([text])[0][0].tolist()
    open_id = tokenizer.convert_tokens_to_ids("<think>")
    close_id = tokenizer.convert_tokens_to_ids("</think>")
    for latents in (lm.reason(prefix), None):  # lrt, nothink: the span as fed after the prompt
        span = lm.thinking_embeds(latents, 1, prefix.opened)
        table = lm.backbone.embed(torch.tensor([open_id, close_id]))
        hits = (span[0, :, None, :] == table[None]).all(-1).sum(0).tolist()
        assert hits[0] + prompt_ids.count(open_id) == 1
        assert hits[1] == 1
    # What each mode feeds after a prompt that opened the span equals what it feeds after the
    # same prompt without the marker, to which it adds the marker itself: the same answers.
    bare = lm.encode(*lm.tokenize_prompts([text.removesuffix("<think>\n")]))
    assert not bare.opened and prefix.opened == (template == "deepseek_r1_distill")
    z = lm.reason(bare)
    for mode in ("lrt", "nothink", "cot"):
        a = lm.generate(prefix, mode, latents=z, budget=4, max_answer_tokens=4).token_ids
        b = lm.generate(bare, mode, latents=z, budget=4, max_answer_tokens=4).token_ids
        assert a == b, mode
    assert cot_prompt(text, "<think>\n", tokenizer).count("<think>") == 1


def test_finished_rows_leave_the_batch_without_changing_any_answer(
    tiny_lm: LatentLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that have stopped are dropped from the cache, so later steps feed fewer rows; every
    row's tokens are those of decoding with all rows kept to the end."""
    prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts(PROMPTS))
    unstopped = tiny_lm.generate(prefix, "lrt", max_answer_tokens=6).token_ids
    # Make row 0's second token an end token, so that row 0 stops while the others go on.
    tiny_lm.eos_ids = [*tiny_lm.eos_ids, unstopped[0][1]]
    assert any(unstopped[0][1] not in row[:6] for row in unstopped[1:]), "no row outlives row 0"
    widths: list[int] = []
    advance = Decoder._advance

    def counted(self: Decoder, ids: torch.Tensor, *args: object) -> torch.Tensor:
        widths.append(ids.shape[0])
        return advance(self, ids, *args)

    monkeypatch.setattr(Decoder, "_advance", counted)
    pruned = tiny_lm.generate(prefix, "lrt", max_answer_tokens=6)
    assert min(widths) < 3, widths  # some row stopped early and left the batch
    monkeypatch.setattr(Decoder, "prunes", False)
    widths.clear()
    kept = tiny_lm.generate(prefix, "lrt", max_answer_tokens=6)
    assert set(widths) == {3}
    assert pruned.token_ids == kept.token_ids and pruned.texts == kept.texts
    torch.testing.assert_close(pruned.mean_logprob, kept.mean_logprob, equal_nan=True)


def test_close_detection_decodes_only_tails_a_token_could_have_closed(
    tiny_lm: LatentLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cot` looks for a plain-text close marker (SmolLM2's) in a row's tail only after a token
    holding the marker's last character, and so leaves the span exactly where decoding every
    tail would (sampled rows, so some tails hold `>`-bearing tokens). The tiny tokenizer's
    `</think>` is an added token, matched by id: hidden here, so that its text is read."""
    monkeypatch.setattr(tiny_lm.tokenizer, "get_added_vocab", dict)
    prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts(PROMPTS))
    settings = {"max_answer_tokens": 4, "budget": 40, "temperature": 1.0}
    tails: list[int] = []
    decode = tiny_lm.tokenizer.decode

    def counted(*args, **kwargs):
        ids = args[0] if args else kwargs["token_ids"]
        tails.append(len(ids) > 1)  # a tail (or the final texts), not one token's text
        return decode(*args, **kwargs)

    monkeypatch.setattr(tiny_lm.tokenizer, "decode", counted)
    fast = tiny_lm.generate(prefix, "cot", **settings)
    thinking = sum(fast.answer_start)
    assert 0 < sum(tails) < thinking / 4, (sum(tails), thinking)

    def every_tail(self: Decoder, i: int, token: int) -> bool:
        return self.close_text in self.lm.tokenizer.decode(self.tokens[i][-8:])

    monkeypatch.setattr(Decoder, "_closes", every_tail)
    slow = tiny_lm.generate(prefix, "cot", **settings)
    assert (slow.token_ids, slow.answer_start) == (fast.token_ids, fast.answer_start)
