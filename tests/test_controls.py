"""Does the question matter? The controls every `lrt` result comes with (DESIGN.md section 5):
the reasoner reading the question's own tokens, the question-blind `reasoner=prompt`, the
`lrt-swap` row, the latents' spread across questions and accuracy by solution steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrt.backbone import Backbone
from lrt.data.arith import load_arith
from lrt.data.prompts import PromptConfig, format_prompt
from lrt.errors import ConfigError
from lrt.evaluation.metrics import compare_to_swap, summarize
from lrt.evaluation.predict import batch_starts, predict_modes, swapped
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig, mode_labels
from lrt.reasoner import build_reasoner, latent_spread, load_reasoner

SMALL = {"num_latents": 4, "width": 32, "depth": 2, "heads": 4}


def lm_with(backbone: Backbone, **reasoner: object) -> LatentLM:
    config = {**SMALL, **reasoner}
    r = build_reasoner(config, backbone.name, backbone.hidden_size, backbone.embedding_rms())
    return LatentLM(backbone, r)


def prompts(lm: LatentLM, n: int = 3) -> tuple[list, torch.Tensor, torch.Tensor]:
    records = load_arith("test", limit=n)
    system = lm.backbone.config.system_prompt
    texts = [format_prompt(lm.tokenizer, r, PromptConfig(), system) for r in records]
    return records, *lm.tokenize_prompts(texts)


def test_the_question_mask_covers_the_users_text_and_nothing_of_the_template(
    tiny_backbone: Backbone,
) -> None:
    lm = lm_with(tiny_backbone, attend="question")
    records, ids, mask = prompts(lm)
    question = lm.question_mask(ids, mask)
    for row, record in enumerate(records):
        kept = ids[row][question[row].bool()]
        assert lm.tokenizer.decode(kept) == record.question
    assert (question <= mask).all()  # never a padding position


def test_a_question_reading_reasoner_never_sees_the_template_states(
    tiny_backbone: Backbone,
) -> None:
    """Changing the base's states at the template's positions (where the attention sink sits)
    leaves a question reader's latents unchanged; a whole-prompt reader's move."""
    for attend, same in (("question", True), ("prompt", False)):
        torch.manual_seed(0)
        lm = lm_with(tiny_backbone, attend=attend)
        _, ids, mask = prompts(lm)
        prefix = lm.encode(ids, mask)
        z = lm.reason(prefix)
        template = (mask.bool() & ~lm.question_mask(ids, mask).bool()).unsqueeze(-1)
        prefix.prompt_states = torch.where(
            template, 100.0 * torch.randn_like(prefix.hidden), prefix.hidden
        )
        assert torch.allclose(lm.reason(prefix), z, atol=1e-6) == same, attend


def test_the_prompt_control_gives_every_question_the_same_trained_latents(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    lm = lm_with(tiny_backbone, arch="prompt")
    _, ids, mask = prompts(lm)
    z = lm.reason(lm.encode(ids, mask))
    assert torch.equal(z[0], z[1]) and torch.equal(z[1], z[2])
    assert latent_spread(z) < 1e-6
    answers = lm.tokenize_answers(["The answer is 1."] * 3)
    lm.sft_loss(ids, mask, *answers).backward()
    assert lm.reasoner.queries.grad is not None and lm.reasoner.queries.grad.abs().sum() > 0
    lm.reasoner.save_pretrained(tmp_path / "prompt")
    loaded = load_reasoner(tmp_path / "prompt", tiny_backbone.name, tiny_backbone.hidden_size)
    assert loaded.config.arch == "prompt"
    hidden, mask = torch.randn(2, 5, tiny_backbone.hidden_size), torch.ones(2, 5)
    assert torch.equal(loaded(hidden, mask), lm.reasoner(hidden, mask))


def test_a_reasoner_saved_before_attend_existed_keeps_reading_the_whole_prompt(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    lm = lm_with(tiny_backbone, attend="question")
    folder = lm.reasoner.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    del config["attend"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_reasoner(folder, tiny_backbone.name, tiny_backbone.hidden_size)
    assert loaded.config.attend == "prompt"
    with pytest.raises(ConfigError, match="reasoner.attend='tokens' is not one of"):
        lm_with(tiny_backbone, attend="tokens")


def test_latent_spread_is_zero_for_identical_latents_and_relative_otherwise() -> None:
    z = torch.ones(4, 3, 8)
    assert latent_spread(z) == 0.0
    z[0] += 1.0
    assert latent_spread(z) > 0
    assert latent_spread(10 * z) == pytest.approx(latent_spread(z))  # scale-free
    assert latent_spread(z[:1]) != latent_spread(z[:1])  # NaN for one question


def test_sft_logs_the_spread_of_the_counted_latents_of_its_chunks() -> None:
    """SFT reduces the spread as sums (so ranks share it without gathering the latents): in one
    process it is `latent_spread` of the counted rows of all its micro-batches."""
    from types import SimpleNamespace

    from lrt.training.sft import SFTModule

    torch.manual_seed(0)
    chunks = [torch.randn(2, 3, 8), torch.randn(2, 3, 8)]
    counted = torch.tensor([True, True, True, False])  # the last row is a rank's padding
    module = SimpleNamespace(
        _latents=chunks, all_sum=lambda v: torch.as_tensor(v, dtype=torch.float64)
    )
    got = SFTModule.batch_spread(module, counted)
    assert got == pytest.approx(latent_spread(torch.cat(chunks)[:3]), rel=1e-6)
    module._latents = [chunks[0][:1]]
    assert SFTModule.batch_spread(module, counted[:1]) != got  # NaN for one question


def test_swap_is_a_derangement_of_questions_that_keeps_samples_together() -> None:
    z = torch.arange(6.0).reshape(6, 1, 1)  # 3 questions x 2 samples
    assert swapped(z, samples=2).flatten().tolist() == [2, 3, 4, 5, 0, 1]
    with pytest.raises(ConfigError, match="at least two questions"):
        swapped(z[:2], samples=2)
    # A last batch of one question joins the batch before it, only when lrt-swap is asked.
    assert batch_starts(9, 4, ["lrt", "lrt-swap"]) == [0, 4]
    assert batch_starts(9, 4, ["lrt"]) == [0, 4, 8]
    assert mode_labels(["direct", "lrt"], [256]) == ["direct", "lrt", "lrt-swap"]


def test_lrt_swap_answers_with_the_next_questions_latents(tiny_backbone: Backbone) -> None:
    torch.manual_seed(0)
    lm = lm_with(tiny_backbone, attend="question")
    records, ids, mask = prompts(lm, n=3)
    settings = DecodeConfig(max_answer_tokens=6)
    out = predict_modes(lm, "arith", records, PromptConfig(), ["lrt", "lrt-swap"], settings, 3)
    prefix = lm.encode(ids, mask)
    z = lm.reason(prefix)
    own = lm.generate(prefix, "lrt", latents=z, max_answer_tokens=6).texts
    other = lm.generate(prefix, "lrt", latents=z.roll(-1, 0), max_answer_tokens=6).texts
    by_id = {r.id: i for i, r in enumerate(records)}
    for mode, expected in (("lrt", own), ("lrt-swap", other)):
        assert [p.text for p in sorted(out[mode], key=lambda p: by_id[p.id])] == expected
    assert out["lrt"][0].latent_spread == pytest.approx(latent_spread(z))
    assert out["lrt"][0].steps == len(records[0].steps)


def test_one_reasoner_pass_serves_every_latent_mode_of_a_batch(
    tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The latents computed for the spread are the ones `lrt` and `lrt-swap` decode with."""
    lm = lm_with(tiny_backbone)
    records, _, _ = prompts(lm, n=3)
    calls: list[int] = []
    reason = type(lm).reason
    monkeypatch.setattr(type(lm), "reason", lambda self, p: calls.append(1) or reason(self, p))
    settings = DecodeConfig(max_answer_tokens=3)
    predict_modes(lm, "arith", records, PromptConfig(), ["lrt", "lrt-swap"], settings, 3)
    assert len(calls) == 1


def test_summaries_split_accuracy_by_steps_and_pair_lrt_with_its_swap(
    tiny_backbone: Backbone,
) -> None:
    lm = lm_with(tiny_backbone)
    records = load_arith("test", limit=6)
    settings = DecodeConfig(max_answer_tokens=4)
    out = predict_modes(lm, "arith", records, PromptConfig(), ["lrt", "lrt-swap"], settings, 3)
    rows = [{"task": "arith", "mode": m, **summarize(out[m])} for m in ("lrt", "lrt-swap")]
    compare_to_swap(rows, [out["lrt"], out["lrt-swap"]])
    steps = {len(r.steps) for r in records}
    assert set(rows[0]["accuracy_by_steps"]) == steps
    assert sum(v["samples"] for v in rows[0]["accuracy_by_steps"].values()) == 6
    assert rows[0]["vs_swap"]["questions"] == 6 and "vs_swap" not in rows[1]


def test_the_run_summary_names_the_reasoner_a_run_loaded_not_the_config_default(
    compose_train, tmp_path: Path
) -> None:
    """GRPO of the control (`init_from=<reasoner=prompt run>`) must not announce the default
    `query` reasoner: the line names the loaded reasoner's architecture."""
    from dataclasses import replace

    from lrt.config import validate_train
    from lrt.train import run_summary

    config = validate_train(compose_train("stage=grpo", f"init_from={tmp_path}"))
    loaded = replace(config.reasoner, arch="prompt", num_latents=8)
    line = run_summary(config, loaded, Path("/runs/x"))
    assert "reasoner prompt K=8" in line and "reasoner query" not in line
