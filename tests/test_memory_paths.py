"""The paths that make paper-scale shapes fit: chunked chosen-token log-probs, activation
checkpointing through the frozen base on a KV cache, single-layer encodes, the attention
kernel passing through. Each must leave today's numbers unchanged."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import latent_lm

from lrt.backbone import Backbone, load_backbone
from lrt.data.prompts import PromptConfig
from lrt.data.tasks import load_task
from lrt.errors import ConfigError
from lrt.evaluation.predict import predict, predict_modes
from lrt.lm.latent_lm import LatentLM
from lrt.lm.logprobs import token_logprobs
from lrt.modes import DecodeConfig

PROMPTS = [
    "<|im_start|>user\nStart with 4. Add 13.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 7?<|im_end|>\n<|im_start|>assistant\n",
]
ANSWERS = ["The answer is 17.", "7"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_the_full_log_softmax(temperature: float) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 11))
    full = torch.log_softmax(head(hidden) / temperature, -1).gather(-1, targets[..., None])
    full = full.squeeze(-1)
    (g_full,) = torch.autograd.grad(full.sum(), hidden)
    chunked = token_logprobs(head, hidden, targets, temperature, chunk=4)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), hidden)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_chunked, g_full, atol=1e-5, rtol=0)


def test_the_lm_head_sees_at_most_a_chunk_of_tokens_whatever_the_rows() -> None:
    """Chunks are rows x positions: 8 answers of 6 tokens with chunks of 12 run the head on 12
    tokens at a time (a chunk of positions would run it on 8 x 12 = 96 and grow with the
    rows), giving the same values as one pass."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    seen: list[int] = []
    head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    hidden, targets = torch.randn(8, 6, 16), torch.randint(0, 50, (8, 6))
    chunked = token_logprobs(head, hidden, targets, chunk=12)
    assert max(seen) == 12 and sum(seen) == 48
    torch.testing.assert_close(chunked, token_logprobs(head, hidden, targets, chunk=48))


def reasoner_grads(lm: LatentLM, loss) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, list(lm.reasoner.parameters()), allow_unused=True)


def test_activation_checkpointing_leaves_the_gradients_unchanged(tiny_backbone: Backbone) -> None:
    """SFT's loss and the answer log-probs GRPO back-propagates (through the base into Z, on
    the prompt's cache) have the same gradients with the base's layers recomputed; and they
    are recomputed (else the equalities would hold with checkpointing silently off)."""
    plain = latent_lm(tiny_backbone, num_latents=3)
    config = replace(tiny_backbone.config, activation_checkpointing=True)
    copied = load_backbone(config)  # a second copy of the same weights, checkpointed
    checkpointed = LatentLM(copied, plain.reasoner)
    ids, mask = plain.tokenize_prompts(PROMPTS)
    ans, ans_mask = plain.tokenize_answers(ANSWERS)
    runs = {}
    for lm in (plain, checkpointed):
        replays: list[int] = []
        mlp = lm.base.get_decoder().layers[0].mlp
        # A wrapped forward, not a forward hook: hooks were seen not to fire on the replay.
        mlp.forward = lambda *a, _n=replays, _f=mlp.forward, **k: _n.append(1) or _f(*a, **k)
        loss = lm.sft_loss(ids, mask, ans, ans_mask)
        replays.clear()  # count the layer's runs in the backward pass alone
        runs[lm] = reasoner_grads(lm, loss), len(replays)
        del mlp.forward
    (a, plain_replays), (b, replays) = runs[plain], runs[checkpointed]
    assert (plain_replays, replays) == (0, 1)  # checkpointing is on: the backward replays it
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    prefix = plain.encode(ids, mask)
    z = plain.reason(prefix).repeat_interleave(2, 0).detach().requires_grad_()
    rows = (ans.repeat_interleave(2, 0), ans_mask.repeat_interleave(2, 0))
    la = plain.answer_logprobs(prefix.fork(2), z, *rows, temperature=0.8)
    lb = checkpointed.answer_logprobs(
        checkpointed.encode(ids, mask).fork(2), z, *rows, temperature=0.8
    )
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=0)
    (ga,) = torch.autograd.grad(la.sum(), z)
    (gb,) = torch.autograd.grad(lb.sum(), z)
    torch.testing.assert_close(gb, ga, atol=1e-5, rtol=0)
    assert ga.abs().sum() > 0


@pytest.mark.parametrize("source_layer", [0, 1, -1, -2])
def test_encode_keeps_the_source_layer_as_output_hidden_states_would(
    tiny_backbone: Backbone, source_layer: int
) -> None:
    lm = latent_lm(tiny_backbone, num_latents=3, source_layer=source_layer)
    ids, mask = lm.tokenize_prompts(PROMPTS)
    prefix = lm.encode(ids, mask)
    with torch.no_grad():
        out = lm.base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    want = torch.where(mask.bool()[..., None], out.hidden_states[source_layer], 0.0)
    torch.testing.assert_close(prefix.hidden, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(prefix.last_logits, out.logits[:, -1].float(), atol=1e-5, rtol=0)


def test_attention_implementation_passes_through(tiny_backbone: Backbone) -> None:
    eager = load_backbone(replace(tiny_backbone.config, attn_implementation="eager"))
    assert eager.model.config._attn_implementation == "eager"
    assert tiny_backbone.model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="flash_attention_2' needs the flash-attn package"):
        replace(tiny_backbone.config, attn_implementation="flash_attention_2")


def test_modes_share_one_encode_per_prompt_and_answer_as_if_alone(
    tiny_lm: LatentLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lrt`, `nothink` and `cot@4` ask the same prompt here (tiny_random has no system line
    of its own), so each length bucket is encoded once for all three, and each mode's answers
    are those it gives when decoded on its own, in the records' order."""
    records = load_task("arith", "test", limit=6)
    settings = DecodeConfig(max_answer_tokens=4)
    modes = ["lrt", "nothink", "cot@4"]
    alone = {m: predict(tiny_lm, "arith", records, PromptConfig(), m, settings, 4) for m in modes}
    encodes: list[int] = []
    real_encode = tiny_lm.encode
    monkeypatch.setattr(
        tiny_lm, "encode", lambda *a, **k: encodes.append(1) or real_encode(*a, **k)
    )
    shared = predict_modes(tiny_lm, "arith", records, PromptConfig(), modes, settings, 4)
    assert len(encodes) == 2  # 6 questions in batches of 4: two buckets, one encode each
    for mode in modes:
        assert [p.id for p in shared[mode]] == [r.id for r in records]
        assert [p.text for p in shared[mode]] == [p.text for p in alone[mode]]


def test_forks_share_the_prompt_cache_and_leave_it_whole(tiny_lm: LatentLM) -> None:
    """A fork, a repeated fork and a row subset hold no copy of the prompt's keys (the fork
    shares them; the repeat and the subset allocate only their own rows), and decoding on or
    extending any of them leaves the prefix as it was."""
    ids, mask = tiny_lm.tokenize_prompts(PROMPTS)
    prefix = tiny_lm.encode(ids, mask)
    keys = [layer.keys for layer in prefix.cache.layers]
    before = [k.clone() for k in keys]
    fork = prefix.fork()
    assert all(a.keys is b for a, b in zip(fork.cache.layers, keys, strict=True))
    first = tiny_lm.generate(prefix, "nothink", max_answer_tokens=3)
    repeated, one = prefix.fork(3), prefix.rows(torch.tensor([1]))
    tiny_lm.answer_logprobs(repeated, None, *tiny_lm.tokenize_answers(ANSWERS * 3))
    tiny_lm.answer_logprobs(one, None, *tiny_lm.tokenize_answers(ANSWERS[1:]))
    assert [layer.keys for layer in prefix.cache.layers] == keys  # the same tensors, unchanged
    for k, b in zip(keys, before, strict=True):
        assert torch.equal(k, b)
    assert tiny_lm.generate(prefix, "nothink", max_answer_tokens=3).token_ids == first.token_ids
    assert torch.equal(one.mask, prefix.mask[1:])


def test_a_checkpointed_pass_drops_the_keys_it_appended(tiny_backbone: Backbone) -> None:
    """Under checkpointing the span's and answer's keys and values are dropped from the cache
    once read, after the forward and after each layer's replay: kept, every layer's K and V
    of every answer token would live until the pass is freed, as much as checkpointing saves.
    The gradients are those of the unchanged pass (test above)."""
    config = replace(tiny_backbone.config, activation_checkpointing=True)
    lm = latent_lm(load_backbone(config), num_latents=3)
    ids, mask = lm.tokenize_prompts(PROMPTS)
    prefix = lm.encode(ids, mask)
    fork = prefix.fork(2)
    ans, ans_mask = lm.tokenize_answers(ANSWERS * 2)
    z = lm.reason(prefix).repeat_interleave(2, 0)
    logp = lm.answer_logprobs(fork, z, ans, ans_mask)
    lengths = {layer.keys.shape[-2] for layer in fork.cache.layers}
    assert lengths == {ids.shape[1]}  # after the forward: the prompt's keys only
    logp.sum().backward()
    lengths = {layer.keys.shape[-2] for layer in fork.cache.layers}
    assert lengths == {ids.shape[1]}  # after every replay too


@pytest.mark.parametrize("mode", ["lrt", "nothink", "direct"])
def test_decoding_each_prompt_g_times_equals_decoding_a_g_fold_fork(
    tiny_lm: LatentLM, mode: str
) -> None:
    """`generate(..., repeats=G)` repeats the prompt cache itself, where the span's forward
    replaces it (a caller's G-fold fork lived through the whole decode), and reads the prompt
    states and logits only where a mode needs them (a fork keeps them once per prompt): the
    same answers, sampled, as decoding a G-fold fork."""
    prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts(PROMPTS))
    fork = prefix.fork(3)
    assert fork.prompt_states is prefix.prompt_states and fork.batch_size == 6
    assert torch.equal(fork.hidden, prefix.hidden.repeat_interleave(3, 0))
    settings = {"max_answer_tokens": 5, "temperature": 1.0}
    inside = tiny_lm.generate(prefix, mode, repeats=3, **settings)
    outside = tiny_lm.generate(fork, mode, **settings)
    assert inside.token_ids == outside.token_ids and len(inside.token_ids) == 6
    for a, b in zip(inside.sampled_logprobs, outside.sampled_logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
