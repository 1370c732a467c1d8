"""Checkpoint evaluation on the tiny random model: modes, metrics, discovery, outputs, errors."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import SUBPROCESS_TIMEOUT_S
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from lrt.backbone import Backbone, backbone_config
from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.data.tasks import load_task
from lrt.errors import CheckpointError, ConfigError
from lrt.evaluation import (
    Prediction,
    evaluate,
    find_reasoners,
    load_tasks,
    pass_at_k,
    predict,
    summarize,
    validate_evaluate,
)
from lrt.evaluation.metrics import (
    accuracy_interval,
    compare_to_best_baseline,
    mcnemar_p,
    paired_difference,
)
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig
from lrt.reasoner import build_reasoner

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY = [
    "model=tiny_random",
    "limit=3",
    "batch_size=3",
    "max_answer_tokens=3",
    "cot_budgets=[4]",
]
PREDICTION_FIELDS = {
    "steps",
    "latent_spread",
    "checkpoint",
    "task",
    "id",
    "mode",
    "sample",
    "text",
    "extracted",
    "correct",
    "tokens",
    "positions",
    "after_prompt",
    "batch_time_s",
    "time_per_question_s",
    "ttft_s",
    "truncated",
    "confidence",
    "route",
    "probe_tokens",
}
METRICS = {
    "accuracy_by_steps",
    "latent_spread",
    "checkpoint",
    "checkpoint_path",
    "task",
    "mode",
    "questions",
    "samples",
    "accuracy",
    "accuracy_ci",
    "mean_tokens",
    "p50_tokens",
    "p95_tokens",
    "mean_probe_tokens",
    "mean_budget_used",
    "mean_positions",
    "mean_prompt",
    "time_per_question_s",
    "batch_latency_s",
    "ttft_s",
    "questions_per_s",
    "truncated",
    "routed_lrt",
    "routed_cot",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: with a second busy process on the machine, intra-op threads spin-wait and
    make each matmul ~100x slower than a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_eval(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[*TINY, *overrides])


def save_reasoner(directory: Path, backbone: Backbone, k: int = 2, base: str | None = None) -> Path:
    torch.manual_seed(k)
    reasoner = build_reasoner(
        {"num_latents": k, "width": 32, "depth": 1, "heads": 4},
        base or backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
    )
    return reasoner.save_pretrained(directory)


def make_run(run: Path, backbone: Backbone, k: int, exports: tuple[str, ...]) -> Path:
    """A train.py run folder as a Hydra multirun job leaves it."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        f"- model=tiny_random\n- reasoner.num_latents={k}\n"
    )
    for name in exports:
        save_reasoner(run / "reasoner" / name, backbone, k)
    return run


def arith_prompts(lm: LatentLM, n: int) -> tuple[list, list[str]]:
    records = load_task("arith", "test", limit=n)
    return records, [format_prompt(lm.tokenizer, r, PromptConfig(), None) for r in records]


# --- metrics ------------------------------------------------------------------------------


def test_pass_at_k_equals_brute_force_over_all_subsets() -> None:
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert math.isclose(pass_at_k(n, c, k), brute, abs_tol=1e-12), (n, c, k)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_summarize_averages_pass_at_k_over_questions() -> None:
    def pred(qid: str, sample: int, correct: bool, tokens: int) -> Prediction:
        return Prediction(
            qid, "lrt", "", None, correct, tokens, tokens + 9, tokens + 3, 4.0, 0.5, 0.2, False,
            0.0, sample,
        )  # fmt: skip

    preds = [pred("a", s, s == 0, 10) for s in range(4)] + [
        pred("b", s, False, 2) for s in range(4)
    ]
    m = summarize(preds, ks=[1, 2, 4])
    assert (m["questions"], m["samples"]) == (2, 4)
    assert m["accuracy"] == pytest.approx(1 / 8)  # pass@1 averaged over every sample
    assert m["pass@1"] == pytest.approx(1 / 8)
    assert m["pass@2"] == pytest.approx((1 - math.comb(3, 2) / math.comb(4, 2)) / 2)
    assert m["pass@4"] == pytest.approx(0.5)
    assert (m["mean_tokens"], m["p50_tokens"]) == (6.0, 6.0)
    assert (m["time_per_question_s"], m["questions_per_s"]) == (0.5, 2.0)
    assert m["routed_lrt"] is None and m["routed_cot"] is None


# --- decoding -----------------------------------------------------------------------------


def test_budget_forcing_stops_exactly_at_the_budget(tiny_lm: LatentLM) -> None:
    budget, max_answer = 5, 3
    _, prompts = arith_prompts(tiny_lm, 3)
    prefix = tiny_lm.encode(*tiny_lm.tokenize_prompts(prompts))
    gen = tiny_lm.generate(
        prefix, "cot", budget=budget, max_answer_tokens=max_answer, force_answer="The answer is"
    )
    forced = tiny_lm._ids(tiny_lm.backbone.config.think_close + "The answer is").tolist()
    close = tiny_lm.backbone.config.think_close.strip()
    for ids, n, text in zip(gen.token_ids, gen.num_generated, gen.texts, strict=True):
        thinking, after = ids[:budget], ids[budget:]
        assert close not in tiny_lm.tokenizer.decode(thinking), "the model closed it itself"
        assert after[: len(forced)] == forced, "the close marker and answer prefix are forced"
        answer = after[len(forced) :]
        assert len(answer) == max_answer, "an answer is still decoded after the budget"
        assert n == budget + len(answer), "forced tokens are not counted as generated"
        assert "The answer is" in text
    assert gen.answer_start == [budget] * 3, "the answer starts at the forced close marker"
    assert all(a.startswith("The answer is") for a in gen.answer_texts), "graded: the answer"
    assert gen.truncated == [True] * 3  # every answer used all max_answer tokens


def test_predict_cot_budget_label_sets_the_budget(tiny_lm: LatentLM) -> None:
    records, _ = arith_prompts(tiny_lm, 2)
    decode = DecodeConfig(max_answer_tokens=2, budget=100)
    preds = predict(tiny_lm, "arith", records, PromptConfig(), "cot@3", decode, batch_size=2)
    assert [p.tokens for p in preds] == [3 + 2, 3 + 2]
    assert {p.mode for p in preds} == {"cot@3"}


def test_hybrid_routes_by_threshold(tiny_lm: LatentLM) -> None:
    records, _ = arith_prompts(tiny_lm, 4)

    def run(mode: str, threshold: float) -> list[Prediction]:
        decode = DecodeConfig(max_answer_tokens=3, hybrid_threshold=threshold)
        return predict(tiny_lm, "arith", records, PromptConfig(), mode, decode, batch_size=4)

    lrt, cot = run("lrt", 0.0), run("cot@4", 0.0)
    keep = run("hybrid@4", -math.inf)
    assert [p.route for p in keep] == ["lrt"] * 4
    assert [p.text for p in keep] == [p.text for p in lrt]
    assert summarize(keep)["routed_lrt"] == 1.0

    redo = run("hybrid@4", math.inf)
    assert [p.route for p in redo] == ["cot"] * 4
    assert [p.text for p in redo] == [p.text for p in cot]
    assert [p.tokens for p in redo] == [a.tokens + b.tokens for a, b in zip(lrt, cot, strict=True)]
    assert [p.confidence for p in redo] == [p.confidence for p in lrt]  # the gate's input
    assert summarize(redo)["routed_cot"] == 1.0

    middle = sorted(p.confidence for p in lrt)[1] + 1e-6  # strictly between two confidences
    mixed = run("hybrid@4", middle)
    assert [p.route for p in mixed] == ["cot" if p.confidence < middle else "lrt" for p in lrt]
    assert summarize(mixed)["routed_cot"] == 0.5


# --- finding reasoners and refusing foreign ones ------------------------------------------


def test_find_reasoners_in_every_kind_of_path(tmp_path: Path, tiny_backbone: Backbone) -> None:
    sweep = tmp_path / "sweep"
    first = make_run(sweep / "0_reasoner.num_latents=2", tiny_backbone, 2, ("best", "final"))
    second = make_run(sweep / "1_reasoner.num_latents=4", tiny_backbone, 4, ("best",))
    make_run(sweep / "2_reasoner.num_latents=8", tiny_backbone, 8, ())  # failed: nothing saved
    assert find_reasoners(sweep) == [first / "reasoner" / "final", second / "reasoner" / "best"]
    assert find_reasoners(sweep, "both") == [
        first / "reasoner" / "best",
        first / "reasoner" / "final",
        second / "reasoner" / "best",
    ]
    assert find_reasoners(first, "best") == [first / "reasoner" / "best"]
    assert find_reasoners(first / "reasoner" / "best") == [first / "reasoner" / "best"]
    with pytest.raises(CheckpointError, match="does not exist"):
        find_reasoners(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no reasoner folder"):
        find_reasoners(sweep / "0_reasoner.num_latents=2" / ".hydra")


def test_reasoner_for_another_base_is_refused(tmp_path: Path, tiny_backbone: Backbone) -> None:
    foreign = save_reasoner(tmp_path / "foreign", tiny_backbone, base="other-base")
    cfg = compose_eval(f"checkpoints={foreign}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(CheckpointError) as err:
        evaluate(cfg)
    assert str(err.value) == (
        f"reasoner {foreign} was trained for base model 'other-base', not 'tiny-random-qwen3'"
    )
    assert not (tmp_path / "out" / "results.json").exists(), "refused before decoding"

    ckpt = tmp_path / "last.ckpt"
    torch.save({"lrt": {"base_model": "other-base", "reasoner_config": {}}}, ckpt)
    cfg = compose_eval(f"checkpoints={ckpt}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(CheckpointError, match="trained for base model 'other-base', not 'tiny"):
        evaluate(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("modes=[lrt,sudoku]", "modes: unknown mode 'sudoku'; known modes: lrt, nothink, cot"),
        ("pass_at_k.n=2", "pass_at_k.k=4 must be between 1 and pass_at_k.n=2"),
        ("checkpoints=/no/such/run", "checkpoints=/no/such/run does not exist"),
        ("cot_budgets=[0]", "cot_budgets=[0] must be positive integers"),
        ("modes=[lrt]", "modes=['lrt'] all need a reasoner; set checkpoints or sweep_dir"),
    ],
)
def test_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        validate_evaluate(compose_eval(override))


def test_unknown_task_is_refused() -> None:
    """`tasks` is a config group (conf/tasks/, one per data config): Hydra names the unknown
    option, as it does for every group."""
    with pytest.raises(MissingConfigException, match="Could not load 'tasks/sudoku'"):
        load_tasks(compose_eval("tasks=[arith,sudoku]"))


def test_evaluation_may_read_the_validation_split() -> None:
    """Evaluation reads only `data.test`, so pointing it at the validation split (to check a
    run's validation figure) is allowed; only training refuses validation == test."""
    cfg = compose_eval("data.test.split=validation", "limit=3")
    options = OmegaConf.to_container(cfg.data.options)
    expected = load_task("arith", "validation", limit=3, **options)
    assert load_tasks(cfg)[0].records == expected


def test_paper_preset_is_the_papers_protocol() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["preset=paper", "limit=2"])
    labels = validate_evaluate(cfg)
    # DESIGN.md section 5: both no-thinking baselines (`direct` is the best one on arith), the
    # method with its swap and blind controls, and budget-forced cot at the paper's two budgets.
    assert labels == ["direct", "nothink", "lrt", "lrt-swap", "lrt-blind", "cot@512", "cot@1024"]
    assert (cfg.pass_at_k.temperature, cfg.pass_at_k.top_p) == (0.6, 0.95)
    assert list(cfg.pass_at_k.k) == [1, 4] and cfg.pass_at_k.n >= 4
    tasks = {t.name: t for t in load_tasks(cfg)}
    assert sorted(tasks) == ["amc23_local", "gsm8k_local", "lsat_local", "math_local"]
    assert [t.task for t in tasks.values()] == ["math", "gsm8k", "lsat", "amc23"]
    assert all(len(t.records) == 2 for t in tasks.values())


# --- whole evaluations ----------------------------------------------------------------------


def test_every_mode_with_sampling_writes_all_outputs(
    tmp_path: Path, tiny_backbone: Backbone
) -> None:
    reasoner = save_reasoner(tmp_path / "reasoner", tiny_backbone)
    out = tmp_path / "out"
    cfg = compose_eval(
        f"checkpoints={reasoner}",
        "tasks=[arith]",
        "modes=[nothink,lrt,cot,hybrid]",
        "pass_at_k.n=2",
        "pass_at_k.k=[1,2]",
        f"output_dir={out}",
    )
    assert evaluate(cfg) == out
    result = json.loads((out / "results.json").read_text())
    rows = {(r["checkpoint"], r["mode"]): r for r in result["results"]}
    assert set(rows) == {
        ("base", "nothink"),
        ("base", "cot@4"),
        ("reasoner", "lrt"),
        ("reasoner", "lrt-swap"),  # added to every lrt evaluation: its controls
        ("reasoner", "lrt-blind"),
        ("reasoner", "hybrid@4"),
    }
    for (_, mode), row in rows.items():
        comparison = {"best_baseline"} if row.get("best_baseline") else {"vs_best_baseline"}
        comparison |= {"vs_swap"} if mode == "lrt" else set()
        assert set(row) == METRICS | {"pass@1", "pass@2"} | comparison
        assert set(row["accuracy_by_steps"]) <= {"1", "2", 1, 2}  # arith: 1-2 operations
        assert (row["task"], row["questions"], row["samples"]) == ("arith", 3, 2)
        assert row["pass@1"] == pytest.approx(row["accuracy"]) and row["pass@2"] >= row["pass@1"]
    hybrid = rows[("reasoner", "hybrid@4")]
    assert hybrid["routed_lrt"] + hybrid["routed_cot"] == pytest.approx(1.0)
    assert rows[("base", "cot@4")]["p50_tokens"] == 4 + 3
    assert set(result["versions"]) >= {"torch", "transformers", "lightning", "lrt"}
    assert result["config"]["pass_at_k"]["n"] == 2

    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 * 3 * 2
    assert all(set(p) == PREDICTION_FIELDS for p in lines)
    assert {p["route"] for p in lines if p["mode"] == "hybrid@4"} <= {"lrt", "cot"}
    assert {p["route"] for p in lines if p["mode"] != "hybrid@4"} == {None}
    assert "| checkpoint | task | mode |" in (out / "results.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_folder_evaluates_every_run(tmp_path: Path, tiny_backbone: Backbone) -> None:
    sweep = tmp_path / "sweep"
    make_run(sweep / "0_reasoner.num_latents=2", tiny_backbone, 2, ("final",))
    make_run(sweep / "1_reasoner.num_latents=4", tiny_backbone, 4, ("final",))
    out = tmp_path / "out"
    evaluate(compose_eval(f"sweep_dir={sweep}", "modes=[lrt]", f"output_dir={out}"))
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [(r["checkpoint"], r["mode"]) for r in rows] == [
        ("0_reasoner.num_latents=2/final", "lrt"),
        ("0_reasoner.num_latents=2/final", "lrt-swap"),
        ("0_reasoner.num_latents=2/final", "lrt-blind"),
        ("1_reasoner.num_latents=4/final", "lrt"),
        ("1_reasoner.num_latents=4/final", "lrt-swap"),
        ("1_reasoner.num_latents=4/final", "lrt-blind"),
    ]
    sweep_md = (out / "sweep.md").read_text()
    assert "| run | reasoner.num_latents | task | mode | accuracy | mean_tokens |" in sweep_md
    assert "| 2 |" in sweep_md and "| 4 |" in sweep_md
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def save_lightning_checkpoint(path: Path, backbone: Backbone) -> None:
    """A `.ckpt` laid out as `StageModule.on_save_checkpoint` writes it (reasoner weights only)."""
    reasoner = build_reasoner(
        {"num_latents": 3, "width": 32, "depth": 1, "heads": 4},
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
    )
    state = {f"lm.reasoner.{k}": v for k, v in reasoner.state_dict().items()}
    meta = {"base_model": backbone.name, "reasoner_config": vars(reasoner.config).copy()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"lrt": meta, "state_dict": state}, path)


@pytest.mark.slow
def test_evaluate_py_end_to_end(tmp_path: Path, tiny_backbone: Backbone) -> None:
    run = make_run(tmp_path / "run", tiny_backbone, 2, ("best", "final"))
    ckpt = tmp_path / "other" / "checkpoints" / "last.ckpt"
    save_lightning_checkpoint(ckpt, tiny_backbone)
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            *TINY,
            f"checkpoints=[{run},{ckpt}]",
            "modes=[nothink,lrt]",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "eval"
    for name in ("results.json", "predictions.jsonl", "results.md", "pareto.png"):
        assert (out / name).is_file(), name
    table = (out / "results.md").read_text()
    assert "| base | arith | nothink | 3 |" in table
    assert "| run/final | arith | lrt | 3 |" in table
    assert "| other/last.ckpt | arith | lrt | 3 |" in table
    assert "evaluation (greedy)" in result.stdout


@pytest.mark.slow
def test_evaluate_takes_the_base_the_reasoner_recorded(
    tmp_path: Path, tiny_backbone: Backbone, run_script
) -> None:
    """Without `model=`, evaluate.py loads the base a reasoner recorded (conf/evaluate.yaml's
    default is another model); a contradicting `model=` is still refused in one line."""
    reasoner = build_reasoner(
        {"num_latents": 2, "width": 32, "depth": 1, "heads": 4},
        tiny_backbone.name,
        tiny_backbone.hidden_size,
        tiny_backbone.embedding_rms(),
        base_config=asdict(tiny_backbone.config),
    )
    folder = reasoner.save_pretrained(tmp_path / "reasoner")
    args = [*TINY[1:], f"checkpoints={folder}", "modes=[nothink,lrt]"]
    result = run_script("evaluate.py", *args, f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "base model tiny-random-qwen3, as the checkpoints recorded it" in (
        result.stdout + result.stderr
    )
    assert "| reasoner | arith | lrt | 3 |" in (tmp_path / "eval" / "results.md").read_text()
    result = run_script(
        "evaluate.py", *args, "model=tiny_random", "model.name=other", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: reasoner {folder} was trained for base model 'tiny-random-qwen3', not 'other'"
    )


# --- baselines at their best, with their uncertainty -----------------------------------------


def test_direct_answers_after_the_templates_own_prompt(tiny_lm: LatentLM) -> None:
    """`direct`: the model's template in its non-thinking mode (Qwen3's closes an empty span
    itself) and nothing fed after it: the same tokens as transformers' own greedy generate."""
    template = (ROOT / "tests" / "fixtures" / "chat_templates" / "qwen3.jinja").read_text()
    tokenizer = copy.deepcopy(tiny_lm.tokenizer)
    tokenizer.chat_template = template
    lm = LatentLM(tiny_lm.backbone, tiny_lm.reasoner)
    lm.tokenizer = tokenizer
    record = Record("q", "What is 2+2?", "4")
    text = format_prompt(tokenizer, record, PromptConfig(), None, thinking=False)
    assert text.endswith("<think>\n\n</think>\n\n")
    assert lm.span_positions("direct") == 0
    ids, mask = lm.tokenize_prompts([text])
    ours = lm.generate(lm.encode(ids, mask), "direct", max_answer_tokens=5).token_ids[0]
    theirs = lm.base.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, eos_token_id=None
    )[0, ids.shape[1] :].tolist()
    assert ours == theirs[: len(ours)] and len(ours) == 5


def test_baselines_get_the_default_system_line_and_nothink_its_prefill(
    tiny_backbone: Backbone,
) -> None:
    """Baselines are asked in `model.baseline_system_prompt` (the model's default), `lrt` in
    `model.system_prompt`; `nothink` carries `model.nothink_prefill` inside its span."""
    config = replace(
        tiny_backbone.config,
        system_prompt="Short.",
        baseline_system_prompt="A much longer default system line.",
        nothink_prefill="Okay, I think I have finished thinking.",
    )
    backbone = replace(tiny_backbone, config=config)
    reasoner = build_reasoner(
        {"num_latents": 2, "width": 32, "depth": 1, "heads": 4},
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
    )
    lm = LatentLM(backbone, reasoner)
    prefill = len(lm.tokenizer(config.nothink_prefill).input_ids)
    empty = lm.open_ids.numel() + lm.close_ids.numel()
    assert lm.span_positions("nothink") == empty + prefill
    records = load_task("arith", "test", limit=2)
    settings = DecodeConfig(max_answer_tokens=2)
    rows = {
        mode: predict(lm, "arith", records, PromptConfig(), mode, settings)
        for mode in ("lrt", "direct", "nothink")
    }
    prompt = {m: [p.positions - p.after_prompt for p in preds] for m, preds in rows.items()}
    longer = len("A much longer default system line.") - len("Short.")
    assert [b - a for a, b in zip(prompt["lrt"], prompt["direct"], strict=True)] == [longer] * 2
    assert prompt["nothink"] == prompt["direct"]
    assert all(p.after_prompt >= empty + prefill for p in rows["nothink"])


NOTHINKING_PREFILL = "Okay, I think I have finished thinking."
"""Ma et al. (2025)'s NoThinking prefill, the paper's `nothink` baseline for thinking models."""
THINKING_MODELS = [
    "qwen3_1_7b",
    "qwen3_4b",
    "qwen3_8b",
    "qwen3_1_7b_random",
    "deepseek_r1_distill_qwen_1_5b",
]


def compose_model(model: str, *overrides: str) -> DictConfig:
    """`conf/evaluate.yaml` with `model=<model>` (no model is loaded)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[f"model={model}", *overrides])


@pytest.mark.parametrize("model", THINKING_MODELS)
def test_thinking_models_run_nothink_with_the_nothinking_prefill(model: str) -> None:
    """Models with a thinking mode prefill NoThinking's sentence inside the closed span, as the
    paper's baseline does; `model.nothink_prefill=null` names the empty-span variant."""
    assert backbone_config(compose_model(model).model).nothink_prefill == NOTHINKING_PREFILL
    empty = compose_model(model, "model.nothink_prefill=null").model
    assert backbone_config(empty).nothink_prefill is None


@pytest.mark.parametrize(
    ("template", "model"),
    [("qwen3", "qwen3_1_7b"), ("deepseek_r1_distill", "deepseek_r1_distill_qwen_1_5b")],
)
def test_nothink_feeds_the_nothinking_layout_after_the_template(
    tiny_backbone: Backbone, template: str, model: str
) -> None:
    """Prompt and `nothink` span together read `<think>\n` + prefill + `\n</think>\n\n` after
    the assistant turn's opening: one open marker also where the template opens the span itself
    (DeepSeek-R1-Distill), as NoThinking writes it."""
    markers = compose_model(model).model
    config = replace(
        tiny_backbone.config,
        think_open=markers.think_open,
        think_close=markers.think_close,
        nothink_prefill=markers.nothink_prefill,
    )
    lm = LatentLM(replace(tiny_backbone, config=config))
    tokenizer = copy.deepcopy(lm.tokenizer)
    path = ROOT / "tests" / "fixtures" / "chat_templates" / f"{template}.jinja"
    tokenizer.chat_template = path.read_text()
    lm.tokenizer = tokenizer
    text = format_prompt(tokenizer, Record("q", "What is 2+2?", "4"), PromptConfig(), None)
    ids, mask = lm.tokenize_prompts([text])
    prefix = lm.encode(ids, mask)
    span = torch.cat([p for p in lm._span_pieces("nothink", prefix.opened)]).tolist()
    fed = tokenizer.decode(ids[0].tolist() + span)
    opening = text.removesuffix("<think>\n")
    assert opening.endswith("<|im_start|>assistant\n" if template == "qwen3" else "Assistant｜>")
    assert fed == opening + "<think>\n" + NOTHINKING_PREFILL + "\n</think>\n\n"
    assert lm.span_positions("nothink", prefix.opened) == len(span)


def test_intervals_and_paired_differences() -> None:
    def preds(correct: list[bool]) -> list[Prediction]:
        return [
            Prediction(f"q{i}", "m", "", None, c, 1, 1, 0, 0.1, 0.1, 0.1, False, 0.0)
            for i, c in enumerate(correct)
        ]

    a = preds([True] * 60 + [False] * 40)
    lo, hi = accuracy_interval(a)
    assert lo < 0.6 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.24 / 100) ** 0.5, rel=0.2)
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0] and not same["win"]
    assert same["mcnemar_p"] == 1.0
    b = preds([True] * 30 + [False] * 70)  # a right on 30 questions b gets wrong, never worse
    better = paired_difference(a, b)
    assert better["difference"] == pytest.approx(0.3) and better["win"]
    assert better["ci"][0] > 0 and better["mcnemar_p"] == pytest.approx(2 / 2**30)
    assert mcnemar_p(9, 1) == pytest.approx(2 * (1 + 10) / 2**10)
    rows = [{"task": "t", "mode": "direct", "accuracy": 0.3}, {"task": "t", "mode": "nothink",
            "accuracy": 0.1}, {"task": "t", "mode": "lrt", "accuracy": 0.6}]  # fmt: skip
    compare_to_best_baseline(rows, [b, preds([False] * 100), a])
    assert rows[0]["best_baseline"] and "vs_best_baseline" not in rows[0]
    assert rows[2]["vs_best_baseline"]["against"] == "direct" and rows[2]["vs_best_baseline"]["win"]


def _result_row(mode: str, accuracy: float) -> dict:
    return {
        "task": "arith",
        "mode": mode,
        "questions": 4,
        "accuracy": accuracy,
        "accuracy_ci": [0.0, 1.0],
        "mean_tokens": 8.0,
        "vs_best_baseline": None,
    }


def test_tabulate_reads_every_run_and_skips_a_corrupt_file_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`evaluate.py tabulate=<sweep>`: each run's own held-out table side by side with the
    override that differs, no model loaded; a damaged results file is named and skipped."""
    sweep = tmp_path / "sweep"
    for job, k, accuracy in (("0_k=4", 4, 0.25), ("1_k=8", 8, 0.5)):
        (sweep / job / ".hydra").mkdir(parents=True)
        overrides = f"- reasoner.num_latents={k}\n- stage.max_steps=3\n"
        (sweep / job / ".hydra" / "overrides.yaml").write_text(overrides)
        rows = [_result_row("lrt", accuracy), _result_row("direct", 0.0)]
        (sweep / job / "final_eval.json").write_text(json.dumps(rows))
    broken = sweep / "2_k=16" / "eval" / "results.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"results": [{"mode": "lrt",\n')  # a job killed while writing it
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        evaluate(compose_eval(f"tabulate={sweep}", f"output_dir={out}"))
    assert f"skipped {broken}: not valid JSON" in caplog.text
    table = json.loads((out / "tabulated.json").read_text())
    assert [(r["source"], r["reasoner.num_latents"], r["mode"]) for r in table] == [
        ("0_k=4/final_eval.json", "4", "lrt"),
        ("0_k=4/final_eval.json", "4", "direct"),
        ("1_k=8/final_eval.json", "8", "lrt"),
        ("1_k=8/final_eval.json", "8", "direct"),
    ]
    assert table[2]["accuracy [95% CI]"] == "50.0% [0.0, 100.0]"
    assert "reasoner.num_latents" in (out / "tabulated.md").read_text()
