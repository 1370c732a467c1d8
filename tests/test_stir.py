"""STIR on the tiny random base: selection, the injection hook, steered decoding, mining, the
library on disk, and the refusals (another base, damaged files, seen questions)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from lrt import train
from lrt.backbone import Backbone
from lrt.baselines.stir import rollouts
from lrt.baselines.stir.decode import SteeredLM, load_libraries
from lrt.baselines.stir.library import Library
from lrt.baselines.stir.mining import Pair
from lrt.baselines.stir.selection import greedy_dpp, select_entries
from lrt.baselines.stir.steering import inject
from lrt.data.loading import load_split
from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.settings import SplitConfig
from lrt.errors import CheckpointError, ConfigError
from lrt.evaluation.discovery import Checkpoint, refuse_seen
from lrt.evaluation.predict import predict_modes
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig

REPLACEMENT = "\ufffd"
"""The tiny byte-level model's random bytes decode to U+FFFD often: a delimiter that makes
many short segments."""
TINY_STIR = [
    "model=tiny_random",
    "stage=stir",
    "stage.questions=3",
    "stage.rollouts=4",
    "stage.max_new_tokens=12",
    "stage.batch_questions=2",
    "stage.delimiter='\\ufffd'",
    "stage.control_points=3",
    "data.max_answer_tokens=4",
    "data.test.limit=3",
    "final_eval.enabled=false",
]


def objective(keys: torch.Tensor, quality: torch.Tensor, subset: list[int], lam: float) -> float:
    """sum log(1 + q) + lam log det(K_S + eps I), computed directly."""
    h = keys.double()[subset]
    gram = h @ h.T + 1e-4 * torch.eye(len(subset), dtype=torch.float64)
    return float(torch.log1p(quality.double()[subset]).sum() + lam * torch.logdet(gram))


def test_greedy_dpp_matches_brute_force_log_det() -> None:
    torch.manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(7, 3), dim=1)
    keys[1] = torch.nn.functional.normalize(keys[0] + 0.01 * torch.randn(3), dim=0)
    quality = torch.tensor([1.0, 0.99, 0.3, 0.5, 0.8, 0.2, 0.6])
    chosen = greedy_dpp(keys, quality, budget=4, diversity=0.5, epsilon=1e-4)
    # The same greedy, each step scoring every candidate by its explicit determinant.
    brute: list[int] = []
    for _ in range(4):
        rest = [i for i in range(7) if i not in brute]
        brute.append(max(rest, key=lambda i: objective(keys, quality, [*brute, i], 0.5)))
    assert chosen == brute
    assert 1 not in chosen[:2], "the near-duplicate of the best key should not come second"


def test_forced_entries_come_first_per_control_point() -> None:
    keys = torch.nn.functional.normalize(torch.randn(6, 3), dim=1)
    quality = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    cp = torch.tensor([1, 1, 1, 2, 2, 2])
    rows = select_entries(keys, quality, cp, budget=4, diversity=0.5, epsilon=1e-4,
                          forced_per_control_point=1)  # fmt: skip
    assert rows[:2] == [1, 3] and len(rows) == 4 and len(set(rows)) == 4


def test_injection_changes_only_the_chosen_layer_at_the_chosen_position(
    tiny_backbone: Backbone,
) -> None:
    decoder = tiny_backbone.model.get_decoder()
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    delta = torch.randn(1, tiny_backbone.hidden_size)

    def outputs() -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
            for layer in decoder.layers
        ]
        try:
            decoder(input_ids=ids)
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    plain = outputs()
    with inject(decoder.layers, {0: delta}):
        steered = outputs()
    torch.testing.assert_close(steered[0][:, -1], plain[0][:, -1] + delta[0])
    assert torch.equal(steered[0][:, :-1], plain[0][:, :-1])
    assert torch.equal(steered[1][:, :-1], plain[1][:, :-1]), "causal: earlier positions kept"
    assert not torch.allclose(steered[1][:, -1], plain[1][:, -1])
    assert torch.equal(outputs()[1], plain[1]), "the hook is gone after the block"


def synthetic_library(backbone: Backbone, scale: float, k_scale: float = 1.0) -> Library:
    """Pairs at control points 1 and 2 with random states: every query retrieves something."""
    torch.manual_seed(1)
    d = backbone.hidden_size
    pairs = [
        Pair(0, m, 0, 0.9, 1.0, 0.1, 1, 1, scale * torch.randn(d), scale * torch.randn(d))
        for m in (1, 2)
        for _ in range(3)
    ]
    online = {"min_sim": -1.0, "k_scale": k_scale}
    meta = {"base_model": backbone.name, "delimiter": REPLACEMENT, "control_points": 3,
            "online": online, "questions": []}  # fmt: skip
    return Library.from_pairs(pairs, d, meta)


def decode_both(backbone: Backbone, library: Library) -> tuple[list, list]:
    records = load_split("arith", SplitConfig(split="test", limit=4))
    lm = SteeredLM(backbone, library)
    out = predict_modes(lm, "arith", records, PromptConfig(), ["cot@16", "stir@16"],
                        DecodeConfig(max_answer_tokens=6), batch_size=2)  # fmt: skip
    return out["cot@16"], out["stir@16"]


def test_empty_library_decodes_exactly_as_cot(tiny_backbone: Backbone) -> None:
    empty = Library.from_pairs(
        [], tiny_backbone.hidden_size, synthetic_library(tiny_backbone, 1).meta
    )
    cot, stir = decode_both(tiny_backbone, empty)
    assert [p.text for p in stir] == [p.text for p in cot]
    assert [p.tokens for p in stir] == [p.tokens for p in cot]
    assert all(p.probe_tokens == 0 for p in stir)


def test_previews_without_commits_leave_cot_intact_and_commits_steer(
    tiny_backbone: Backbone,
) -> None:
    # k_scale 0: every segment previews its candidates, and commits nothing.
    cot, idle = decode_both(tiny_backbone, synthetic_library(tiny_backbone, 1.0, k_scale=0.0))
    assert [p.text for p in idle] == [p.text for p in cot]
    assert sum(p.probe_tokens for p in idle) > 0
    assert all(p.positions > c.positions for p, c in zip(idle, cot, strict=True))
    cot, steered = decode_both(tiny_backbone, synthetic_library(tiny_backbone, 50.0))
    assert [p.text for p in steered] != [p.text for p in cot]


def test_a_steered_segment_is_recomputed_unsteered_after_it(tiny_backbone: Backbone) -> None:
    """Only segment 2 is steered (corrections at m = 1 alone, M = 2): every token the model
    chooses after it must be the plain greedy continuation of the text so far, as STIR's
    unsteered re-prefill of its next call gives (forced tokens are fed, not chosen)."""
    library = synthetic_library(tiny_backbone, 50.0)
    rows = [i for i in range(len(library)) if library.control_point[i] == 1 and ~library.anchor[i]]
    library = library.subset(rows)
    library.meta["control_points"] = 2
    lm = SteeredLM(tiny_backbone, library)
    records = load_split("arith", SplitConfig(split="test", limit=4))
    texts = [format_prompt(lm.tokenizer, r, PromptConfig(), None) for r in records]
    prefix = lm.encode(*lm.tokenize_prompts(texts))
    budget = 12
    gen = lm.generate(prefix, "stir", budget=budget, max_answer_tokens=4)
    cot = lm.generate(prefix, "cot", budget=budget, max_answer_tokens=4)
    assert gen.token_ids != cot.token_ids
    forced = len(lm._ids(tiny_backbone.config.think_close + "The answer is"))
    contexts = rollouts.contexts(lm, records, PromptConfig())
    checked = 0
    for context, ids in zip(contexts, gen.token_ids, strict=True):
        ends = rollouts.segment_ends(lm.tokenizer, ids[: budget - 1], REPLACEMENT)
        after = min(ends[1] if len(ends) > 1 else budget, budget)  # where the impulse is gone
        for j in range(after, len(ids)):
            if not budget <= j < budget + forced:
                logits = lm.base(input_ids=torch.tensor([[*context, *ids[:j]]])).logits[0, -1]
                assert int(logits.argmax()) == ids[j], (ids, j)
                checked += 1
    assert checked >= 20


def fake_grade(task: str, text: str, record: object) -> bool:
    """Half the tiny model's random rollouts 'correct', as a function of their text."""
    return sum(text.encode()) % 2 == 0


def mine(compose_train: Callable[..., DictConfig], run_dir: Path, *extra: str) -> Library:
    train.run(compose_train(*TINY_STIR, f"run_dir={run_dir}", *extra))
    return Library.load(run_dir, "tiny-random-qwen3", 64)


def test_mining_is_deterministic_resumes_and_evaluates(
    tmp_path: Path, compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch,
    tiny_backbone: Backbone,
) -> None:  # fmt: skip
    monkeypatch.setattr(rollouts, "grade", fake_grade)
    first = mine(compose_train, tmp_path / "a")
    assert len(first) > 0 and bool(first.anchor.any()) and not bool(first.anchor.all())
    second = mine(compose_train, tmp_path / "b")
    for name in ("keys", "payloads", "quality", "control_point"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name

    # A killed run resumes: finished questions are kept, the missing one is mined again.
    mined = tmp_path / "a" / "stir_library" / "mined"
    (mined / "q00001.safetensors").unlink()
    kept = (mined / "q00000.safetensors").stat().st_mtime_ns
    calls: list[list[int]] = []
    sample = rollouts.sample_rollouts

    def counted(lm: LatentLM, task: str, records: list, indices: list, *rest: object) -> list:
        calls.append(list(indices))
        return sample(lm, task, records, indices, *rest)

    monkeypatch.setattr("lrt.baselines.stir.stage.sample_rollouts", counted)
    again = mine(compose_train, tmp_path / "a")
    assert calls == [[1]]
    assert (mined / "q00000.safetensors").stat().st_mtime_ns == kept
    assert torch.equal(again.payloads, first.payloads)
    with pytest.raises(ConfigError, match="mined with other settings"):
        mine(compose_train, tmp_path / "a", "stage.rollouts=5")

    # Evaluation of the library is deterministic too, and its rows carry probe tokens.
    records = load_split("arith", SplitConfig(split="test", limit=3))
    base = LatentLM(tiny_backbone)
    [ckpt] = load_libraries([str(tmp_path / "a")], base)
    assert ckpt.label == "stir:a"
    runs = [
        predict_modes(ckpt.lm, "arith", records, PromptConfig(), ["stir@12"], DecodeConfig(4))
        for _ in range(2)
    ]
    assert [p.text for p in runs[0]["stir@12"]] == [p.text for p in runs[1]["stir@12"]]


def saved(tmp_path: Path, backbone: Backbone) -> Path:
    folder = tmp_path / "stir_library"
    synthetic_library(backbone, 1.0).save(folder)
    return folder


def one_line_error(folder: Path, base: str = "tiny-random-qwen3") -> str:
    with pytest.raises(CheckpointError) as err:
        Library.load(folder, base, 64)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_bad_library_is_refused_in_one_line(tmp_path: Path, tiny_backbone: Backbone) -> None:
    folder = saved(tmp_path, tiny_backbone)
    assert "for base model 'tiny-random-qwen3', not 'other'" in one_line_error(folder, "other")
    tensors = folder / "library.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40] + b"\x00garbage")
    assert str(tensors) in one_line_error(folder)
    tensors.unlink()
    assert f"{tensors} does not exist" in one_line_error(folder)
    meta = json.loads((folder / "library.json").read_text())
    folder = saved(tmp_path / "other", tiny_backbone)
    (folder / "library.json").write_text(json.dumps({**meta, "base_model": None}))
    assert "names no base_model" in one_line_error(folder)


def test_mining_and_evaluation_questions_never_overlap(
    compose_train: Callable[..., DictConfig], tmp_path: Path, tiny_backbone: Backbone
) -> None:
    with pytest.raises(ConfigError, match="same split"):
        train.run(compose_train(*TINY_STIR, f"run_dir={tmp_path}", "data.test.split=train"))
    records = load_split("arith", SplitConfig(split="test", limit=2))
    lm = LatentLM(tiny_backbone)
    recased = " " + records[1].question.upper()  # the same question, compared as normalised text
    seen = Checkpoint("stir:x", tmp_path, lm, seen=frozenset({recased}))
    with pytest.raises(ConfigError, match="built on 1 of task arith's evaluation questions"):
        refuse_seen([seen], {"arith": records})
    refuse_seen([Checkpoint("stir:y", tmp_path, lm)], {"arith": records})
