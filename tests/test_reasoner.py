"""The reasoning network: shapes, scale, masking, save/load and the base-model check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrt.errors import CheckpointError, ConfigError
from lrt.reasoner import Reasoner, ReasonerConfig, build_reasoner, load_reasoner


def make(k: int = 4, hidden: int = 64, rms: float = 0.5) -> Reasoner:
    torch.manual_seed(0)
    return build_reasoner({"num_latents": k, "width": 32, "heads": 4}, "base-a", hidden, rms)


def test_output_shape_and_embedding_scale() -> None:
    reasoner = make(k=5, rms=0.5)
    z = reasoner(torch.randn(3, 7, 64) * 40, torch.ones(3, 7, dtype=torch.long))
    assert z.shape == (3, 5, 64)
    torch.testing.assert_close(z.pow(2).mean(-1).sqrt(), torch.full((3, 5), 0.5), atol=1e-3, rtol=0)


def test_padding_positions_are_ignored() -> None:
    reasoner = make().eval()
    h = torch.randn(1, 6, 64)
    alone = reasoner(h, torch.ones(1, 6, dtype=torch.long))
    padded_h = torch.cat([torch.randn(1, 3, 64) * 100, h], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(reasoner(padded_h, mask), alone, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip_bit_exact(tmp_path: Path) -> None:
    reasoner = make()
    with torch.no_grad():
        for p in reasoner.parameters():
            p.add_(torch.randn_like(p))
    reasoner.save_pretrained(tmp_path)
    assert {f.name for f in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = load_reasoner(tmp_path, base_model="base-a", hidden_size=64)
    assert loaded.config == reasoner.config
    for (name, a), (_, b) in zip(
        reasoner.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_loading_onto_another_base_is_refused(tmp_path: Path) -> None:
    make().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="trained for a base of hidden size 64, not 576"):
        load_reasoner(tmp_path, hidden_size=576)
    with pytest.raises(CheckpointError, match="trained for base model 'base-a', not 'base-b'"):
        load_reasoner(tmp_path, base_model="base-b", hidden_size=64)


def test_corrupted_files_are_named(tmp_path: Path) -> None:
    make().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors"):
        load_reasoner(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_reasoner(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist: not a reasoner folder"):
        load_reasoner(tmp_path / "missing")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"num_latents": 0}, r"reasoner.num_latents=0 must be a positive integer"),
        ({"width": 30, "heads": 4}, r"reasoner.width=30 is not divisible by reasoner.heads=4"),
        ({"arch": "lstm"}, r"reasoner.arch='lstm' is not one of"),
        ({"latents": 3}, r"unknown key 'reasoner.latents'"),
    ],
)
def test_invalid_config_is_named(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ReasonerConfig.from_dict(raw)
