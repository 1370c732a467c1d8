"""Token-space baseline (`stage=grpo_cot`): rewards, config checks, adapters, train -> evaluate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lrt.adapter import META_NAME, adapter_label, find_adapter, merged_backbone, write_meta
from lrt.backbone import Backbone
from lrt.baselines.grpo_cot.rewards import answer_part, kimi_length_terms, reward_functions
from lrt.baselines.grpo_cot.settings import GRPOCoTSettings, RewardSettings
from lrt.baselines.grpo_cot.trainer import resume_checkpoint
from lrt.baselines.grpo_cot.trl_setup import cot_prompt
from lrt.config import validate_train
from lrt.data.records import Record
from lrt.errors import CheckpointError, ConfigError
from lrt.grading import grade
from lrt.schema import typed

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [
    Record(id="q0", question="Start with 4. Add 8. What is the result?", answer="12"),
    Record(id="q1", question="Start with 9. Subtract 2. What is the result?", answer="7"),
]
# Two questions x four samples, as TRL passes them: each question's samples consecutive.
COMPLETIONS = [
    "4 plus 8 is 12.\n</think>\n\nThe answer is 12.",  # correct
    "4 plus 8 is 13.\n</think>\n\nThe answer is 13.",  # wrong
    "\n</think>\n\nThe answer is 12.",  # correct
    "Start with 4, add 8: that gives 11.",  # wrong: ended inside its thinking, graded whole
    "\n</think>\n\nThe answer is 7.",  # correct
    "9 - 2 = 7\n</think>\n\n9 - 2 = 7",  # correct
    "The answer is 7.\n</think>\n\nThe answer is 6.",  # wrong: only the answer is graded
    "",  # no answer at all
]
CLOSE = "\n</think>\n\n"  # the model config's think_close
INDEX = [0, 0, 0, 0, 1, 1, 1, 1]
LENGTHS = [10, 20, 30, 50, 8, 8, 8, 8]
IDS = [[1] * n for n in LENGTHS]


def call(func, completions=COMPLETIONS, ids=IDS, index=INDEX) -> list[float]:
    """As TRL's `_calculate_rewards` calls a reward function."""
    prompts = ["p"] * len(completions)
    return func(
        prompts=prompts,
        completions=completions,
        completion_ids=ids,
        record_index=index,
        trainer_state=None,
        log_extra=lambda *a, **k: None,
        log_metric=lambda *a, **k: None,
    )


def test_correctness_reward_is_the_graders_verdict() -> None:
    funcs = reward_functions("arith", RECORDS, RewardSettings("none"), 100, CLOSE)
    assert [f.__name__ for f in funcs] == ["correctness"]
    rewards = call(funcs[0])
    assert rewards == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    expected = [
        float(grade("arith", answer_part(c, CLOSE, n < 100), RECORDS[i]))
        for c, n, i in zip(COMPLETIONS, LENGTHS, INDEX, strict=True)
    ]
    assert rewards == expected


def test_only_the_answer_is_rewarded_as_evaluation_grades_cot() -> None:
    """After the close marker only; a completion that ended (EOS) inside its thinking is graded
    whole, standing in for evaluation's forced answer; one cut at the length limit inside its
    thinking never answered."""
    funcs = reward_functions("arith", RECORDS, RewardSettings("none"), 100, CLOSE)
    right_in_thinking = "4 + 8 = 12. The answer is 12."
    texts = [right_in_thinking, right_in_thinking, "12\n</think>\n\nThe answer is 11."]
    rewards = call(funcs[0], texts, [[1] * 40, [1] * 100, [1] * 40], [0, 0, 0])
    assert rewards == [1.0, 0.0, 0.0]
    assert answer_part("a\n</think>\n\nb", CLOSE, ended=False) == "\n\nb"


def test_linear_length_penalty_charges_correct_completions_only() -> None:
    funcs = reward_functions("arith", RECORDS, RewardSettings("linear", 0.5), 100, CLOSE)
    assert [f.__name__ for f in funcs] == ["correctness", "length_linear"]
    length = call(funcs[1])
    # -0.5 x tokens / 100 where correct, 0 where wrong.
    assert length == pytest.approx([-0.05, 0.0, -0.15, 0.0, -0.04, -0.04, 0.0, 0.0])
    total = [a + b for a, b in zip(call(funcs[0]), length, strict=True)]
    assert total == pytest.approx([0.95, 0.0, 0.85, 0.0, 0.96, 0.96, 0.0, 0.0])


def test_kimi_length_reward_within_each_group() -> None:
    funcs = reward_functions("arith", RECORDS, RewardSettings("kimi", 1.0), 100, CLOSE)
    assert [f.__name__ for f in funcs] == ["correctness", "length_kimi"]
    # Question 0: lengths 10/20/30/50, lambda = 0.5, 0.25, 0.0, -0.5; correct get lambda, wrong
    # min(0, lambda). Question 1: all 8 tokens long, lambda = 0.
    assert call(funcs[1]) == pytest.approx([0.5, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0])
    half = reward_functions("arith", RECORDS, RewardSettings("kimi", 0.5), 100, CLOSE)
    assert call(half[1]) == pytest.approx([0.25, 0.0, 0.0, -0.25, 0.0, 0.0, 0.0, 0.0])
    assert kimi_length_terms([5, 15], [False, False], ["a", "a"]) == [0.0, -0.5]


def test_cot_prompt_drops_a_bos_the_tokenizer_adds_again(tiny_backbone: Backbone) -> None:
    tok = tiny_backbone.tokenizer
    assert cot_prompt("<|im_start|>user\nhi", "<think>\n", tok) == "<|im_start|>user\nhi<think>\n"

    class BosTokenizer:
        bos_token, bos_token_id = "<s>", 1

        def __call__(self, text: str):
            return type("Enc", (), {"input_ids": [1, 2]})()

    assert cot_prompt("<s>user: hi", "<think>\n", BosTokenizer()) == "user: hi<think>\n"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+stage.rank=8", "unknown key 'stage.rank'"),
        ("+stage.lora.rank=8", "unknown key 'stage.lora.rank'"),
        ("+stage.reward.coef=1", "unknown key 'stage.reward.coef'"),
        ("+stage.trl.no_such_field=1", "unknown key 'stage.trl.no_such_field'"),
        ("+stage.trl.max_steps=3", "stage.trl.max_steps is set by lrt"),
        ("stage.reward.length_penalty=cubic", "stage.reward.length_penalty='cubic' is not one of"),
        ("stage.num_generations=1", "stage.num_generations=1 must be at least 2"),
        ("stage.micro_batch_size=3", "stage.micro_batch_size=3 must be null or divide"),
        ("stage.loss_type=ppo", "stage.loss_type='ppo' is not one of"),
        ("stage.eval_modes=[lrt]", "stage.eval_modes: 'lrt' needs a reasoner"),
    ],
)
def test_bad_stage_settings_fail_before_loading(compose_train, override: str, message: str) -> None:
    cfg = compose_train("stage=grpo_cot", "model=tiny_random", override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_train(cfg)


def test_shipped_settings_translate_to_trl(compose_train, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from lrt.baselines.grpo_cot.trl_setup import trl_config

    cfg = compose_train("experiment=baseline_grpo_cot_deepseek_r1_distill_qwen_1_5b")
    settings = typed(GRPOCoTSettings, OmegaConf.to_container(cfg.stage, resolve=True), "stage")
    assert settings.lora.r == 64 and settings.max_completion_length == 4096
    args = trl_config(replace(settings, bf16=False), tmp_path, 0, [], run_name="r")
    # 32 questions x 8 samples per optimiser step, 16 completions per pass.
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 256
    assert args.generation_batch_size == 256 and args.num_generations == 8
    assert args.max_completion_length == 4096 and args.report_to == []


def make_adapter(folder: Path, backbone: Backbone, base: str | None) -> Path:
    """A LoRA adapter with non-zero weights (peft's default init would leave the model as is)."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(copy.deepcopy(backbone.model), config).save_pretrained(folder)
    if base is not None:
        write_meta(folder, base)
    return folder


def test_merged_adapter_changes_the_base_and_matches_peft(
    tmp_path: Path, tiny_backbone: Backbone
) -> None:
    from peft import PeftModel

    folder = make_adapter(tmp_path / "run" / "adapter" / "final", tiny_backbone, tiny_backbone.name)
    assert find_adapter(tmp_path / "run") == folder
    assert adapter_label(folder) == "adapter:run/final"
    merged = merged_backbone(folder, tiny_backbone)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = tiny_backbone.model(ids).logits
        got = merged.model(ids).logits
        import copy

        peft = PeftModel.from_pretrained(copy.deepcopy(tiny_backbone.model), str(folder)).eval()
        want = peft(input_ids=ids).logits
    assert not torch.allclose(got, base, atol=1e-3), "the adapter did not change the model"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in merged.model.parameters())
    # The shared base is untouched.
    with torch.no_grad():
        torch.testing.assert_close(tiny_backbone.model(ids).logits, base)


def test_adapter_for_another_base_is_refused(tmp_path: Path, tiny_backbone: Backbone) -> None:
    folder = make_adapter(tmp_path / "a", tiny_backbone, "another-base")
    with pytest.raises(
        CheckpointError,
        match="adapter was trained for base model 'another-base', not 'tiny-random-qwen3'",
    ):
        merged_backbone(folder, tiny_backbone)
    with pytest.raises(CheckpointError, match="is not a PEFT adapter folder"):
        find_adapter(tmp_path)
    # The same check guards resuming a run from a TRL checkpoint.
    ckpt = make_adapter(tmp_path / "run" / "checkpoints" / "checkpoint-4", tiny_backbone, "other")
    with pytest.raises(CheckpointError, match="trained for base model 'other'"):
        resume_checkpoint(None, ckpt.parent, "tiny-random-qwen3")
    # Refusing leaves the checkpoint's metadata as it was.
    assert json.loads((ckpt / META_NAME).read_text())["base_model"] == "other"


@pytest.mark.slow
def test_two_steps_write_an_adapter_that_evaluate_loads(tmp_path: Path, run_script) -> None:
    run_dir = tmp_path / "gc"
    result = run_script(
        "train.py",
        "stage=grpo_cot",
        "model=tiny_random",
        "stage.max_steps=2",
        "stage.batch_size=2",
        "stage.num_generations=2",
        "stage.thinking_budget=6",
        "stage.max_answer_tokens=4",
        "stage.save_steps=2",
        "stage.reward.length_penalty=kimi",
        "data.train.limit=8",
        "data.test.limit=2",
        "trainer.enable_progress_bar=false",
        "model.system_prompt=Read the latents.",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # It trains in the system line its rows are evaluated in (the base's), not the latents' one.
    log = (run_dir / "train.log").read_text().splitlines()
    shown = next(line for line in log if "training prompts, e.g." in line)
    assert "<|im_start|>user" in shown and "Read the latents." not in shown
    final = run_dir / "adapter" / "final"
    assert (final / "adapter_model.safetensors").is_file()
    assert json.loads((final / META_NAME).read_text())["base_model"] == "tiny-random-qwen3"
    assert (run_dir / "checkpoints" / "checkpoint-2" / META_NAME).is_file()
    metrics = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,epoch,") and "rewards/length_kimi/mean" in metrics[0]
    assert [line.split(",")[0] for line in metrics[1:3]] == ["1", "2"]
    table = (run_dir / "final_eval.md").read_text()
    assert "| base | cot@6 | 2 |" in table and "| adapter:gc/final | nothink | 2 |" in table

    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        "model=tiny_random",
        f"adapter={run_dir}",
        "modes=[nothink,cot]",
        "cot_budgets=[4]",
        "limit=2",
        "max_answer_tokens=3",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "results.md").read_text()
    for row in (
        "| base | arith | nothink | 2 |",
        "| base | arith | cot@4 | 2 |",
        "| adapter:gc/final | arith | nothink | 2 |",
        "| adapter:gc/final | arith | cot@4 | 2 |",
    ):
        assert row in table, table
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {r["checkpoint_path"] for r in rows} == {None, str(final)}


@pytest.mark.slow
def test_unknown_stage_key_is_one_line_before_any_model(tmp_path: Path, run_script) -> None:
    result = run_script(
        "train.py",
        "stage=grpo_cot",
        "model=tiny_random",
        "+stage.lora.rank=8",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: unknown key 'stage.lora.rank'"
