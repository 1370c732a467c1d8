"""The memory model's terms against what a tiny model really holds (bench/memory_model.py)."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch

from lrt.backbone import Backbone
from tests.conftest import ROOT, latent_lm

sys.path.insert(0, str(ROOT / "bench"))
import memory_model  # noqa: E402


def test_kv_cache_term_is_the_bytes_a_dynamic_cache_holds(tiny_backbone: Backbone) -> None:
    """The cache terms: encode a prompt, run the span and answer on it, count the cache."""
    lm = latent_lm(tiny_backbone)
    shape = memory_model.Shape.of(tiny_backbone.model.config)
    b, p, m = 3, 7, 5
    ids = torch.randint(3, 200, (b, p))
    prefix = lm.encode(ids, torch.ones_like(ids))
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in prefix.cache.layers)
    assert held == shape.layers * b * p * memory_model.kv_bytes(shape, 4)
    answers = torch.randint(3, 200, (b, m))
    with torch.no_grad():
        lm.answer_logprobs(prefix, lm.reason(prefix), answers, torch.ones_like(answers))
    span = lm.span_positions("lrt")
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in prefix.cache.layers)
    u = memory_model.Setup(
        stage="sft",
        base=shape,
        body=None,
        reasoner_params=0,
        latents=lm.reasoner.num_latents,
        prompt=p,
        answer=m,
        markers=span - lm.reasoner.num_latents,
        batch=b,
        micro=b,
        rollout=None,
        checkpointing=False,  # (checkpointed, a pass drops its extension: test_memory_paths)
        dtype_bytes=4,
        autocast=False,
    )
    terms = memory_model.backward_pass(u, b, m, p, b)
    assert held == terms["extended cache [prompt+span+answer]"]


def test_counts_are_those_of_built_modules(tiny_backbone: Backbone) -> None:
    """Parameter counts from the meta device equal those of the real modules."""
    shape = memory_model.Shape.of(tiny_backbone.model.config)
    assert shape.params == sum(p.numel() for p in tiny_backbone.model.parameters())
    config = {"num_latents": 3, "width": 32, "depth": 1, "heads": 4}
    built = latent_lm(tiny_backbone, **config).reasoner
    count = memory_model.reasoner_params(config, tiny_backbone.hidden_size)
    assert count == sum(p.numel() for p in built.parameters())


def test_pretrained_reasoner_is_counted_from_its_public_shape() -> None:
    """Qwen3-Embedding-0.6B without its embedding: 28 layers of 15.7M plus the final norm,
    plus f_in, f_out, the K inputs and the two RMS norms around it."""
    config = {"arch": "pretrained", "init_from": "Qwen/Qwen3-Embedding-0.6B", "num_latents": 4}
    d, d_r = 64, 1024
    layer = d_r * 2048 * 2 + d_r * 1024 * 2 + 3 * d_r * 3072 + 2 * 128 + 2 * d_r
    expected = 28 * layer + d_r + (d * d_r + d_r) + (d_r * d + d) + 4 * d_r + 2 * d
    assert memory_model.reasoner_params(config, d) == expected


def test_paper_configs_compose_and_grpo_decode_cache_dominates() -> None:
    """Every paper config composes into a setup, and the 8B GRPO rollout's decode cache is
    what the prediction says sets its peak on one GPU."""
    cfg = memory_model.compose_config("paper_grpo_qwen3_8b")
    sft = memory_model.compose_config("paper_sft_qwen3_8b").reasoner
    u = memory_model.setup_of(cfg, None, sft)
    assert (u.latents, u.generations, u.answer, u.micro) == (256, 8, 2048, 1)
    assert memory_model.predict(u, 1, "ddp")["peak_phase"] == "rollout decode"
    assert memory_model.predict(u, 8, "fsdp")["total"] < memory_model.predict(u, 8, "ddp")["total"]


@pytest.mark.parametrize("model", memory_model.MODELS)
def test_each_paper_grpo_config_decodes_what_one_80_gb_gpu_holds(model: str) -> None:
    """The shipped `stage.rollout_batch_size` of each paper GRPO config is predicted to fit one
    80 GB GPU (10% kept free) on 1 to 8 GPUs: decoding a rank's whole share of 128 questions x 8
    answers at once was predicted at 100 to 450 GiB on one."""
    cfg = memory_model.compose_config(f"paper_grpo_{model}")
    sft = memory_model.compose_config(f"paper_sft_{model}").reasoner
    u = memory_model.setup_of(cfg, None, sft)
    usable = 0.9 * 80 * memory_model.GiB
    assert all(memory_model.predict(u, n, "ddp")["total"] <= usable for n in (1, 2, 4, 8))
    whole = replace(u, rollout=None)
    assert memory_model.predict(whole, 1, "ddp")["total"] > usable
