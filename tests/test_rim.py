"""RiM (`lrt/baselines/rim`): the 4D readout mask, the two losses, the saved adapter, the steps
and the stage end to end, on the tiny random base."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from lrt.backbone import backbone_config, load_backbone
from lrt.baselines.rim.evaluation import load_rim
from lrt.baselines.rim.layout import build_layout
from lrt.baselines.rim.model import RiMLM, build_rim
from lrt.baselines.rim.module import RiMModule
from lrt.baselines.rim.settings import RiMSettings
from lrt.baselines.rim.steps import require_steps
from lrt.data.records import Record
from lrt.data.tasks import load_task
from lrt.errors import CheckpointError, ConfigError, DataError
from lrt.lm.latent_lm import LatentLM

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "conf" / "model" / "tiny_random.yaml"
SETTINGS = dict(lora_r=4, lora_alpha=8.0, num_blocks=3, max_steps=4, grounding_steps=2)


def rim_lm(**settings: object) -> tuple[RiMLM, RiMSettings]:
    """A fresh tiny base (LoRA is injected in place) with adapters and blocks moved off their
    initial values, so that a test sees them act (LoRA's B starts at zero)."""
    config = RiMSettings(**{**SETTINGS, **settings})
    lm = build_rim(load_backbone(backbone_config(OmegaConf.load(TINY_MODEL))), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return lm.eval(), config


def prompts(lm: RiMLM, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return lm.tokenize_prompts(texts)


def causal_logprobs(lm: RiMLM, ids: torch.Tensor, k: int, tokens: list[int]) -> torch.Tensor:
    """By hand: one ordinary causal pass over `[prompt, blocks 1..k, readout]` of one unpadded
    prompt, and the log-prob of each readout token from the position before it."""
    embeds = torch.cat(
        [
            lm.backbone.embed(ids),
            lm.memory(k, 1, lm.base.dtype),
            lm.backbone.embed(torch.tensor([tokens])),
        ],
        dim=1,
    )
    logits = lm.base(inputs_embeds=embeds, use_cache=False).logits[0].float()
    n = len(tokens)
    logp = logits[-n - 1 : -1].log_softmax(-1)
    return logp[torch.arange(n), torch.tensor(tokens)]


def test_readouts_see_their_own_blocks_only_and_blocks_never_see_later_ones() -> None:
    """Perturbing what a position must not see leaves its output unchanged; perturbing what it
    must see changes it (so the check can fail)."""
    lm, _ = rim_lm()
    ids, mask = prompts(lm, ["Start with 3. Add 4.", "Start with 10."])
    readouts = [[[5, 6], [7, 8, 9], [10]], [[11], [], [12, 13]]]
    layout = build_layout(mask, lm.memory.block_size, readouts)
    n, size, k = ids.shape[1], lm.memory.block_size, layout.num_blocks
    col = torch.arange(layout.position_ids.shape[1])
    block_end = n + k * size
    starts = [block_end, block_end + 2, block_end + 5]  # readout widths 2, 3, 2
    readout_cols = [col[s:e] for s, e in zip(starts, [*starts[1:], len(col)], strict=True)]

    with torch.no_grad():
        embeds = lm.layout_embeds(ids, layout)
        before = lm.layout_hidden(embeds, layout)

        def after(cols: torch.Tensor) -> torch.Tensor:
            changed = embeds.clone()
            changed[:, cols] += torch.randn_like(changed[:, cols])
            return lm.layout_hidden(changed, layout)

        def same(out: torch.Tensor, cols: torch.Tensor) -> bool:
            return torch.allclose(out[:, cols], before[:, cols], atol=1e-5)

        # Readout 2 is invisible to readouts 1 and 3 and to every block; it sees itself.
        out = after(readout_cols[1])
        assert same(out, readout_cols[0]) and same(out, readout_cols[2])
        assert same(out, col[:block_end])
        # Block 3 is invisible to blocks 1-2 and readouts 1-2; readout 3 sees it.
        block3 = col[n + 2 * size : block_end]
        out = after(block3)
        assert same(out, col[: n + 2 * size])
        assert same(out, readout_cols[0]) and same(out, readout_cols[1])
        assert not same(out, readout_cols[2])
        # Block 1 reaches every readout after it.
        out = after(col[n : n + size])
        assert not any(same(out, cols) for cols in readout_cols)


@pytest.mark.parametrize("phase", ["grounding", "refinement"])
def test_loss_equals_a_hand_transcription_on_two_blocks(phase: str) -> None:
    """Grounding: step k's NLL after blocks 1..k. Refinement: the answer's NLL after every
    block, weighted alpha_k = 2k/(K+1). Each by a separate ordinary causal pass."""
    lm, settings = rim_lm(num_blocks=2, phase=phase)
    module = RiMModule(lm, "arith", settings)
    record = Record(
        "r", "Start with 1. Add 2. Multiply by 2.", "6", steps=("1 + 2 = 3.", "3 * 2 = 6.")
    )
    ids, mask = prompts(lm, [record.question])
    answer_ids, answer_mask = lm.tokenize_answers(["The answer is 6."])
    answer = answer_ids[0][answer_mask[0].bool()].tolist()
    batch = {"input_ids": ids, "attention_mask": mask}
    readouts = [module.readouts(record, answer, phase)]
    with torch.no_grad():
        loss = module.readout_nll((batch, readouts))
        if phase == "grounding":
            steps = [lm.tokenizer(s, add_special_tokens=False).input_ids for s in record.steps]
            assert readouts[0] == steps
            hand = -sum(causal_logprobs(lm, ids, k + 1, s).sum() for k, s in enumerate(steps))
        else:
            assert readouts[0] == [answer, answer]
            weights = [2 / 3, 4 / 3]
            hand = -sum(
                w * causal_logprobs(lm, ids, k + 1, answer).sum() for k, w in enumerate(weights)
            )
    assert torch.allclose(loss, hand, atol=1e-4), (float(loss), float(hand))


def test_saved_adapter_round_trips_and_keeps_its_base(tmp_path: Path) -> None:
    """Saved, merged into a fresh base and loaded by evaluate's loader, the adapter answers
    exactly as the trained model did; the bare base is left as it was; another base refuses."""
    lm, settings = rim_lm()
    lm.save(tmp_path / "adapter" / "final", settings)
    fresh = LatentLM(load_backbone(backbone_config(OmegaConf.load(TINY_MODEL))))
    ids, mask = prompts(lm, ["Start with 3. Add 4. What is the result?", "Start with 9."])
    with torch.no_grad():
        base_logits = fresh.base(input_ids=ids, attention_mask=mask).logits
        [loaded] = load_rim([str(tmp_path)], fresh)
        assert loaded.label == f"rim:{tmp_path.name}/final"
        want = lm.generate(lm.encode(ids, mask), "rim", max_answer_tokens=6)
        got = loaded.lm.generate(loaded.lm.encode(ids, mask), "rim", max_answer_tokens=6)
        assert got.token_ids == want.token_ids
        assert torch.allclose(got.mean_logprob, want.mean_logprob, atol=1e-4)
        assert torch.equal(fresh.base(input_ids=ids, attention_mask=mask).logits, base_logits)
    assert loaded.lm.span_positions("rim") == settings.num_blocks * settings.block_size
    saved = load_file(str(tmp_path / "adapter" / "final" / "adapter_model.safetensors"))
    assert saved and all("lora_" in key for key in saved), "only adapter weights are saved"

    other = LatentLM(load_backbone(backbone_config({**OmegaConf.load(TINY_MODEL), "name": "x"})))
    with pytest.raises(
        CheckpointError, match="trained for base model 'tiny-random-qwen3', not 'x'"
    ):
        load_rim([str(tmp_path)], other)


def test_a_bad_step_annotation_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    good = {"question": "q", "answer": "Half is 48/2 = <<48/2=24>>24.\n#### 24"}
    rows = [good, {"question": "q", "answer": "Half is <<48/2>>24.\n#### 24"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        load_task("gsm8k", "train", path=path)
    assert str(err.value) == (
        f"{path}:2: field 'answer' has a malformed calculator annotation '<<48/2>>'."
    )
    path.write_text(json.dumps({"question": "q", "cot": "<<4-2=2>> <<2/.5=4", "answer": "4"}))
    with pytest.raises(DataError, match=rf"^{path}:1: field 'cot' has an unbalanced '<<' near"):
        load_task("gsm8k_aug", "test", path=path)
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps(good) + "\n")
    assert load_task("gsm8k", "train", path=ok)[0].steps == ("48/2=24",)
    with pytest.raises(DataError, match="record 'x' has no reasoning steps"):
        require_steps([Record("x", "q", "1")], "data.train")


def test_settings_refuse_bad_values_with_the_key() -> None:
    with pytest.raises(ConfigError, match=r"stage.grounding_steps=150 must be between 0 and"):
        RiMSettings(grounding_steps=150)
    with pytest.raises(ConfigError, match=r"stage.phase='warmup' is not one of"):
        RiMSettings(phase="warmup")


def test_stage_trains_resumes_exactly_and_evaluates(
    tmp_path: Path,
    compose_train: Callable[..., DictConfig],
    train_script,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`train.py stage=rim`, stopped by SIGTERM right at the phase switch and resumed, ends with
    the adapter of the uninterrupted run; its `rim` rows then evaluate beside `direct`."""
    tiny = [
        "model=tiny_random",
        "stage=rim",
        "stage.lora_r=4",
        "stage.num_blocks=2",
        "stage.batch_size=4",
        "stage.max_steps=4",
        "stage.grounding_steps=2",
        "stage.val_every_n_steps=100",
        "stage.checkpoint_every_n_steps=1",
        "data.val.limit=4",
        "data.test.limit=4",
        "data.max_answer_tokens=4",
        "trainer.enable_progress_bar=false",
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_script.run(compose_train(*tiny, f"run_dir={whole}"))

    real, calls = RiMLM.readout_logprobs, iter(range(1000))

    def stop_in_step_two(self, *args, **kwargs):
        if next(calls) == 1:
            signal.raise_signal(signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RiMLM, "readout_logprobs", stop_in_step_two)
    with pytest.raises(train_script.Stopped):
        train_script.run(compose_train(*tiny, f"run_dir={parts}"))
    ckpt = torch.load(parts / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lrt"]["stage"] == "rim" and ckpt["global_step"] == 2
    assert all("lora_" in k or k == "lm.memory.embeddings" for k in ckpt["state_dict"])
    monkeypatch.setattr(RiMLM, "readout_logprobs", real)
    train_script.run(compose_train(*tiny, f"run_dir={parts}"))
    for name in ("adapter_model.safetensors", "memory.safetensors"):
        a = load_file(str(whole / "adapter" / "final" / name))
        b = load_file(str(parts / "adapter" / "final" / name))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    assert "rim" in (whole / "final_eval.md").read_text()

    from lrt.evaluation.run import evaluate

    cfg = compose_train(
        "model=tiny_random",
        "modes=[rim,direct]",
        f"rim={whole}",
        "limit=4",
        "max_answer_tokens=4",
        f"output_dir={tmp_path / 'eval'}",
        config_name="evaluate",
    )
    rows = json.loads((evaluate(cfg) / "results.json").read_text())["results"]
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["rim"]["checkpoint"] == "rim:whole/final"
    assert by_mode["rim"]["vs_best_baseline"]["against"] == "direct"
    assert by_mode["rim"]["ttft_s"] > 0
