"""The latent channel (issue 39): the `lrt-blind` probe, and the recipes that make Z carry the
question (`stage.question_dropout`, `reasoner.token_residual`, `stage=reconstruct`) or the
solution (`stage.latent_loss=colar`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import latent_lm
from test_controls import prompts

from lrt.backbone import Backbone
from lrt.data.arith import load_arith
from lrt.data.prompts import PromptConfig, target_text
from lrt.errors import ConfigError
from lrt.evaluation.predict import predict_modes
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig, mode_labels
from lrt.training.latent_targets import chunk_means, colar_loss
from lrt.training.settings import SFTSettings
from lrt.training.sft import SFTModule


def without_question(lm: LatentLM, ids: torch.Tensor, mask: torch.Tensor):
    """The same prompts with the user's text deleted, left-padded again."""
    keep = mask.bool() & ~lm.question_mask(ids, mask).bool()
    rows = [ids[i][keep[i]] for i in range(ids.shape[0])]
    width = max(r.numel() for r in rows)
    out = torch.full((len(rows), width), lm.tokenizer.pad_token_id, dtype=torch.long)
    out_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - r.numel() :] = r
        out_mask[i, width - r.numel() :] = 1
    return out, out_mask


def test_a_blind_row_is_the_prompt_without_its_question_to_the_base(
    tiny_backbone: Backbone,
) -> None:
    """The base's view of a blind row equals a prompt from which the question was deleted
    (same logits, same answers with the same latents), while the reasoner still reads the
    whole prompt (the same latents as the seeing encode); rows not blind are untouched."""
    lm = latent_lm(tiny_backbone)
    _, ids, mask = prompts(lm)
    seeing = lm.encode(ids, mask)
    blind = lm.encode(ids, mask, torch.tensor([True, False, True]))
    deleted = lm.encode(*without_question(lm, ids, mask))
    for row in (0, 2):
        assert torch.allclose(blind.last_logits[row], deleted.last_logits[row], atol=1e-4)
        assert not torch.allclose(blind.last_logits[row], seeing.last_logits[row], atol=1e-3)
    assert torch.allclose(blind.last_logits[1], seeing.last_logits[1], atol=1e-5)
    z = lm.reason(seeing)
    assert torch.allclose(lm.reason(blind), z, atol=1e-5)
    every = lm.encode(ids, mask, torch.ones(3, dtype=torch.bool))
    got = lm.generate(every, "lrt", latents=z, max_answer_tokens=5).texts
    assert got == lm.generate(deleted, "lrt", latents=z, max_answer_tokens=5).texts


def test_lrt_blind_decodes_the_seeing_latents_with_the_question_withheld(
    tiny_backbone: Backbone,
) -> None:
    lm = latent_lm(tiny_backbone)
    records, ids, mask = prompts(lm)
    settings = DecodeConfig(max_answer_tokens=5)
    out = predict_modes(lm, "arith", records, PromptConfig(), ["lrt", "lrt-blind"], settings, 3)
    z = lm.reason(lm.encode(ids, mask))
    deleted = lm.encode(*without_question(lm, ids, mask))
    expected = lm.generate(deleted, "lrt", latents=z, max_answer_tokens=5).texts
    by_id = {r.id: i for i, r in enumerate(records)}
    assert [p.text for p in sorted(out["lrt-blind"], key=lambda p: by_id[p.id])] == expected
    # Positions count what the base attends to: the blind rows lack the question's tokens.
    assert sum(p.positions for p in out["lrt-blind"]) < sum(p.positions for p in out["lrt"])


def test_the_blind_control_joins_lrt_unless_turned_off() -> None:
    assert mode_labels(["direct", "lrt"], [256], blind=True) == [
        "direct",
        "lrt",
        "lrt-swap",
        "lrt-blind",
    ]
    assert mode_labels(["lrt", "lrt-blind"], [256], blind=True) == ["lrt", "lrt-swap", "lrt-blind"]
    assert "lrt-blind" not in mode_labels(["lrt"], [256], blind=False)
    # The default job lists lrt-swap itself: the blind row still comes after it.
    assert mode_labels(["lrt", "lrt-swap", "direct"], [], blind=True) == [
        "lrt",
        "lrt-swap",
        "lrt-blind",
        "direct",
    ]
    assert mode_labels(["direct"], [256], blind=True) == ["direct"]


def test_question_dropout_draws_rows_by_step_and_place_in_the_global_batch() -> None:
    def rows(p: float, step: int, slots: list[int], seed: int = 0) -> list[bool]:
        module = SimpleNamespace(
            settings=SFTSettings(batch_size=64, question_dropout=p),
            seed=seed,
            global_step=step,
            withheld=False,
        )
        return SFTModule.blind_rows(module, torch.tensor(slots)).tolist()

    assert (
        SFTModule.blind_rows(
            SimpleNamespace(settings=SFTSettings(), seed=0, global_step=0, withheld=False),
            torch.arange(4),
        )
        is None
    )
    whole = rows(0.5, 3, list(range(64)))
    assert 16 < sum(whole) < 48
    # Two ranks' slices of the same global batch draw what one process draws.
    assert rows(0.5, 3, list(range(0, 64, 2))) == whole[0::2]
    assert rows(0.5, 4, list(range(64))) != whole  # a new draw each step
    assert rows(1.0, 3, [0, 5, -1]) == [True, True, False]  # a rank's padding row: never
    assert not any(rows(0.0 + 1e-9, 3, list(range(64))))
    with pytest.raises(ConfigError, match="stage.question_dropout=1.5 must be in"):
        SFTSettings(question_dropout=1.5)


def test_a_dropped_question_trains_through_the_blind_view(tiny_backbone: Backbone) -> None:
    """`sft_loss(blind=...)` is the loss of the prompt with the question deleted, so a row
    dropped by `question_dropout` gets a different loss and gradient than a seeing one."""
    lm = latent_lm(tiny_backbone)
    _, ids, mask = prompts(lm)
    answers = lm.tokenize_answers(["1 + 2 = 3. The answer is 3."] * 3)
    everyone = torch.ones(3, dtype=torch.bool)
    blind = lm.sft_loss(ids, mask, *answers, blind=everyone)
    deleted_ids, deleted_mask = without_question(lm, ids, mask)
    deleted_prefix = lm.encode(deleted_ids, deleted_mask)
    z = lm.reason(lm.encode(ids, mask))
    logp = lm.answer_logprobs(deleted_prefix, z, *answers)
    assert blind.detach().item() == pytest.approx(float(-logp.sum() / answers[1].sum()), rel=1e-4)
    assert blind.item() != pytest.approx(lm.sft_loss(ids, mask, *answers).item(), rel=1e-3)


def test_the_token_residual_starts_each_latent_as_a_question_token(
    tiny_backbone: Backbone,
) -> None:
    lm = latent_lm(tiny_backbone, token_residual=True, num_latents=100)
    records, ids, mask = prompts(lm, n=2)
    prefix = lm.encode(ids, mask)
    z = lm.reason(prefix)
    out = lm.reasoner(prefix.hidden, prefix.reasoner_mask)
    for row, record in enumerate(records):
        q = lm.tokenizer(record.question, add_special_tokens=False).input_ids
        n = len(q)
        assert n < 100
        tokens = lm.backbone.embed(torch.tensor(q))
        assert torch.allclose(z[row, :n], tokens + 0.1 * out[row, :n], atol=1e-5)
        assert torch.allclose(z[row, n:], out[row, n:], atol=1e-6)  # past the end: the network
    lm.reasoner.residual_gate.data.zero_()
    # With the gate shut, the span holds the question's own token embeddings.
    q = lm.tokenizer(records[0].question, add_special_tokens=False).input_ids
    shut = lm.reason(prefix)[0, : len(q)]
    assert torch.equal(shut, lm.backbone.embed(torch.tensor(q)))
    with pytest.raises(ConfigError, match="token_residual=true needs reasoner.arch='query'"):
        latent_lm(tiny_backbone, token_residual=True, arch="prompt")


def test_the_question_target_is_the_question_text() -> None:
    record = load_arith("test", limit=1)[0]
    assert target_text(record, PromptConfig(target="question")) == record.question


def test_colar_targets_are_the_mean_embeddings_of_k_solution_chunks() -> None:
    embeds = torch.arange(10.0).reshape(5, 2)  # 5 tokens, d=2
    means, has = chunk_means(embeds, 2)  # chunks of 3 and 2 tokens
    assert means.tolist() == [[2.0, 3.0], [7.0, 8.0]] and has.tolist() == [True, True]
    means, has = chunk_means(embeds[:2], 3)  # fewer tokens than latents: the last gets none
    assert has.tolist() == [True, True, False] and means[2].abs().sum() == 0
    z = torch.zeros(1, 3, 2)
    loss = colar_loss(z, means.unsqueeze(0), has.unsqueeze(0), scale=2.0)
    assert loss.item() == pytest.approx(((0 + 1) / 2 + (4 + 9) / 2) / 2 / 4)
    assert colar_loss(means.unsqueeze(0), means.unsqueeze(0), has.unsqueeze(0), 1.0).item() == 0
    with pytest.raises(ConfigError, match="stage.latent_loss='codi' is not one of"):
        SFTSettings(latent_loss="codi")


TINY = [
    "model=tiny_random",
    "reasoner.width=32",
    "reasoner.num_latents=4",
    "stage.batch_size=4",
    "stage.max_steps=2",
    "stage.val_every_n_steps=2",
    "stage.checkpoint_every_n_steps=2",
    "data.val.limit=4",
    "data.test.limit=4",
    "data.max_answer_tokens=4",
    "trainer.enable_progress_bar=false",
]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "logs" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_reconstruct_then_sft_with_dropout_and_colar_end_to_end(
    tmp_path: Path, compose_train, train_script, caplog: pytest.LogCaptureFixture
) -> None:
    """`stage=reconstruct` trains on the question with every row blind and writes no held-out
    table; SFT chained from its reasoner logs `val/blind_accuracy` and tabulates `lrt-blind`."""
    rec = tmp_path / "rec"
    with caplog.at_level("INFO", logger="lrt.train"):
        train_script.run(compose_train(f"run_dir={rec}", *TINY, "stage=reconstruct"))
    assert "reconstruct on arith (target: question)" in caplog.text
    assert not (rec / "final_eval.md").exists()
    assert any(row.get("val/loss") for row in metrics(rec))
    assert not any(row.get("val/accuracy") for row in metrics(rec))  # no answer to grade
    sft = tmp_path / "sft"
    overrides = [
        f"init_from={rec / 'reasoner' / 'final'}",
        "stage.question_dropout=0.5",
        "stage.latent_loss=colar",
        "data.prompt.target=answer",
        "final_eval.modes=[lrt]",
    ]
    train_script.run(compose_train(f"run_dir={sft}", *TINY, *overrides))
    assert any(row.get("val/blind_accuracy") for row in metrics(sft))
    table = (sft / "final_eval.md").read_text()
    assert "lrt-blind" in table and "lrt-swap" in table
    answers = [
        json.loads(x) for x in (sft / "final_eval_predictions.jsonl").read_text().splitlines()
    ]
    assert {a["mode"] for a in answers} == {"lrt", "lrt-swap", "lrt-blind"}
    assert len(answers) == 3 * 4 and all(a["checkpoint"] == "final" for a in answers)


BLANK = {
    "text": "",
    "extracted": None,
    "tokens": 1,
    "positions": 1,
    "after_prompt": 1,
    "batch_time_s": 0.0,
    "time_per_question_s": 0.0,
    "ttft_s": 0.0,
    "truncated": False,
    "confidence": 0.0,
}


def test_pooled_difference_pairs_each_seed_and_resamples_questions(tmp_path: Path) -> None:
    from lrt.evaluation.pooled import main, pooled

    def run(name: str, correct: list[bool], mode: str = "lrt") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        rows = [
            {
                "checkpoint": "final",
                "task": "arith",
                "id": f"q{i}",
                "mode": mode,
                **BLANK,
                "correct": c,
            }
            for i, c in enumerate(correct)
        ]
        (folder / "final_eval_predictions.jsonl").write_text(
            "\n".join(json.dumps(r) for r in rows) + "\n"
        )
        return folder

    a = [run("a0", [True] * 8 + [False] * 2), run("a1", [True] * 6 + [False] * 4)]
    b = [run("b0", [True] * 5 + [False] * 5), run("b1", [True] * 5 + [False] * 5)]
    result = main(["--runs", *map(str, a), "--against", *map(str, b)])
    assert result["runs"]["per_seed"] == [0.8, 0.6] and result["against"]["mean"] == 0.5
    assert result["difference"] == pytest.approx(0.2)
    lo, hi = result["ci"]
    assert lo <= 0.2 <= hi and result["questions"] == 10
    # Every question improved in every seed: an interval of that one value, a win.
    same = pooled([{"q": 1.0}, {"q": 1.0}], [{"q": 0.0}, {"q": 0.0}])
    assert same["ci"] == [1.0, 1.0] and same["win"]
    with pytest.raises(ConfigError, match="2 runs against 1"):
        pooled([{"q": 1.0}] * 2, [{"q": 0.0}])
    with pytest.raises(ConfigError, match="has no answer in mode 'lrt-blind'"):
        main(["--runs", str(a[0]), "--against", str(b[0]), "--mode", "lrt-blind"])
