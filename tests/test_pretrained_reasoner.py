"""`reasoner.arch=pretrained`: input layouts, exact weight copying, save/load, the base check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrt.backbone import Backbone
from lrt.errors import CheckpointError, ConfigError
from lrt.reasoner import PretrainedReasoner, Reasoner, ReasonerConfig, build_reasoner, load_reasoner

LAYOUTS = ("hadamard", "concat")


def make(backbone: Backbone, **raw) -> Reasoner:
    torch.manual_seed(0)
    return build_reasoner(
        {"arch": "pretrained", "init_from": "base", "num_latents": 3, **raw},
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
        base=backbone.model,
    )


def body_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The decoder body's weights without the token embedding the reasoner drops."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("embed_tokens.")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_give_k_latents_at_the_base_embedding_scale(
    tiny_backbone: Backbone, layout: str
) -> None:
    reasoner = make(tiny_backbone, layout=layout)
    assert isinstance(reasoner, PretrainedReasoner)
    hidden = torch.randn(2, 6, tiny_backbone.hidden_size) * 30
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    z = reasoner(hidden, mask)
    assert z.shape == (2, 3, tiny_backbone.hidden_size)
    rms = torch.full((2, 3), tiny_backbone.embedding_rms())
    torch.testing.assert_close(z.pow(2).mean(-1).sqrt(), rms, rtol=1e-3, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_left_padding_does_not_change_the_latents(tiny_backbone: Backbone, layout: str) -> None:
    reasoner = make(tiny_backbone, layout=layout).eval()
    h = torch.randn(1, 5, tiny_backbone.hidden_size)
    alone = reasoner(h, torch.ones(1, 5, dtype=torch.long))
    padded = torch.cat([torch.randn(1, 2, tiny_backbone.hidden_size) * 100, h], dim=1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(reasoner(padded, mask), alone, atol=1e-5, rtol=1e-5)


def test_layouts_read_the_question_differently(tiny_backbone: Backbone) -> None:
    """hadamard sees only the last prompt state; concat sees every one."""
    h = torch.randn(1, 5, tiny_backbone.hidden_size)
    mask = torch.ones(1, 5, dtype=torch.long)
    changed = h.clone()
    changed[0, 0] += 5.0  # an earlier token
    hadamard, concat = make(tiny_backbone).eval(), make(tiny_backbone, layout="concat").eval()
    torch.testing.assert_close(hadamard(changed, mask), hadamard(h, mask))
    assert not torch.allclose(concat(changed, mask), concat(h, mask))


def test_init_from_base_copies_the_base_body_exactly(tiny_backbone: Backbone) -> None:
    reasoner = make(tiny_backbone)
    copied, original = body_weights(reasoner.body), body_weights(tiny_backbone.model.get_decoder())
    assert copied.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(copied[key], value.float()), key
    assert reasoner.body.embed_tokens is None
    assert all(p.requires_grad for p in reasoner.parameters())
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters()), "base unfrozen"
    assert reasoner.body.layers[0].self_attn.q_proj.weight is not (
        tiny_backbone.model.get_decoder().layers[0].self_attn.q_proj.weight
    )


def test_init_from_a_folder_copies_its_weights_and_keeps_the_first_layers(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    """A saved model folder stands for a hub id (the same `from_pretrained` call)."""
    pretrained = tmp_path / "pretrained"
    tiny_backbone.model.save_pretrained(pretrained)
    reasoner = make(tiny_backbone, init_from=str(pretrained), num_layers=1)
    assert len(reasoner.body.layers) == 1 and reasoner.config.body_config["num_hidden_layers"] == 1
    original = body_weights(tiny_backbone.model.get_decoder())
    kept = {k: v for k, v in original.items() if not k.startswith("layers.1.")}
    copied = body_weights(reasoner.body)
    assert copied.keys() == kept.keys()
    for key, value in kept.items():
        assert torch.equal(copied[key], value), key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_save_and_load_round_trip_and_base_check(
    tiny_backbone: Backbone, tmp_path: Path, layout: str
) -> None:
    reasoner = make(tiny_backbone, layout=layout, num_layers=1)
    reasoner.save_pretrained(tmp_path)
    loaded = load_reasoner(tmp_path, tiny_backbone.name, tiny_backbone.hidden_size)
    assert isinstance(loaded, PretrainedReasoner) and loaded.config == reasoner.config
    for (name, a), (_, b) in zip(
        reasoner.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    h, mask = torch.randn(2, 4, tiny_backbone.hidden_size), torch.ones(2, 4, dtype=torch.long)
    torch.testing.assert_close(loaded.eval()(h, mask), reasoner.eval()(h, mask), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="trained for base model 'tiny-random-qwen3', not"):
        load_reasoner(tmp_path, base_model="other", hidden_size=64)
    with pytest.raises(CheckpointError, match="trained for a base of hidden size 64, not 576"):
        load_reasoner(tmp_path, hidden_size=576)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"arch": "pretrained", "layout": "stack"}, r"reasoner.layout='stack' is not one of"),
        ({"arch": "pretrained", "num_layers": 0}, r"reasoner.num_layers=0 must be a positive"),
        ({"arch": "pretrained", "init_from": None}, r"reasoner.init_from must name"),
    ],
)
def test_invalid_pretrained_config_is_named(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ReasonerConfig.from_dict({"init_from": "base", **raw})


def test_missing_or_oversized_body_is_named(tiny_backbone: Backbone, compose_train) -> None:
    from lrt.config import validate_train

    with pytest.raises(ConfigError, match=r"reasoner.init_from=/nowhere/body.gguf does not exist"):
        validate_train(
            compose_train("reasoner=pretrained", "reasoner.init_from=/nowhere/body.gguf")
        )
    with pytest.raises(ConfigError, match=r"reasoner.num_layers=5 exceeds the body's 2 layers"):
        make(tiny_backbone, num_layers=5)


@pytest.mark.slow
def test_sft_then_answer_grpo_end_to_end(tmp_path: Path, compose_train, train_script) -> None:
    """SFT of a pretrained-initialised reasoner (concat layout, one body layer), then the
    paper's answer-token GRPO with both explorations and gradient accumulation from it."""
    common = [
        "model=tiny_random",
        "reasoner=pretrained",
        "reasoner.layout=concat",
        "reasoner.num_layers=1",
        "reasoner.num_latents=2",
        "stage.batch_size=2",
        "stage.val_every_n_steps=2",
        "stage.checkpoint_every_n_steps=2",
        "data.val.limit=2",
        "data.train.limit=8",
        "final_eval.enabled=false",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]
    sft = train_script.run(
        compose_train(*common, "stage.max_steps=2", f"run_dir={tmp_path / 'sft'}")
    )
    final = load_reasoner(sft / "reasoner" / "final", "tiny-random-qwen3", 64)
    assert isinstance(final, PretrainedReasoner) and len(final.body.layers) == 1

    grpo = train_script.run(
        compose_train(
            *common,
            "stage=grpo",
            "stage.exploration=both",
            "stage.temperature=1.0",
            "stage.micro_batch_size=1",
            "stage.num_generations=4",
            "stage.max_answer_tokens=6",
            "stage.format_reward=1.0",  # rewards vary within groups: a gradient to follow
            "stage.optim.lr=1e-2",
            "stage.beta=0.1",
            "stage.max_steps=2",
            f"init_from={sft / 'reasoner' / 'final'}",
            f"run_dir={tmp_path / 'grpo'}",
        )
    )
    ckpt = torch.load(grpo / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["lrt"]["reasoner_config"]["body_config"]["num_hidden_layers"] == 1
    after = load_reasoner(grpo / "reasoner" / "final", "tiny-random-qwen3", 64)
    moved = [not torch.equal(a, b) for a, b in zip(
        final.state_dict().values(), after.state_dict().values(), strict=True
    )]  # fmt: skip
    assert any(moved), "GRPO left the reasoner unchanged"
    header = (grpo / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("reward_mean", "kl", "sigma", "clip_frac", "step_time_s"):
        assert f"train/{name}" in header
