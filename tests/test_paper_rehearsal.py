"""A scale rehearsal of every paper config, end to end on CPU, before anyone pays for a GPU.

Each `experiment=paper_*` runs as composed, with three kinds of override and no other:
- the model: a tiny random model of the same family (Qwen3, or Qwen2 for R1-Distill) carrying
  the real model's chat template (`tests/fixtures/chat_templates/`), thinking markers and
  prefill; the paper reasoner's Qwen3-Embedding body becomes the base's own (no hub here);
- the machine and the data: `trainer=cpu` (bf16-mixed needs a GPU), local copies of the
  training data in the upstream layout (OpenR1-Math, DeepScaleR) and of MATH-500;
- sizes, one override each: steps, batch, K, answer length, validation and test questions,
  and how often to validate and save.
The SFT run's reasoner starts the GRPO run, which `evaluate.py preset=paper` reloads from its
run folder; the layout of what the base reads is checked token by token in training and in
every evaluated mode.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lrt import train
from lrt.data.parsers import last_boxed

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TEMPLATES = ROOT / "tests" / "fixtures" / "chat_templates"
DATA = ROOT.parent / "shared" / "data"
PREFILL = "Okay, I think I have finished thinking."
K = 4

FAMILIES = {
    # model config of the paper run -> (transformers model type, chat template fixture)
    "qwen3_1_7b": ("qwen3", "qwen3"),
    "qwen3_4b": ("qwen3", "qwen3"),
    "qwen3_8b": ("qwen3", "qwen3"),
    "deepseek_r1_distill_qwen_1_5b": ("qwen2", "deepseek_r1_distill"),
}
PAPER_RUNS = sorted(p.stem for p in (CONF / "experiment").glob("paper_*_*.yaml"))

SIZES = [
    f"reasoner.num_latents={K}",
    "stage.max_steps=2",
    "stage.batch_size=2",
    "data.max_answer_tokens=8",
    "data.val.limit=2",
    "data.test.limit=2",
    "stage.val_every_n_steps=1",
    "stage.checkpoint_every_n_steps=1",
]
"""The only sizes scaled down; every other key is the paper config's."""


def model_swap(model: str) -> list[str]:
    model_type, template = FAMILIES[model]
    tiny = (
        f"{{model_type: {model_type}, hidden_size: 64, intermediate_size: 128, "
        "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, "
        "max_position_embeddings: 4096, tie_word_embeddings: true}"
    )
    return [
        "model.source=random",
        f"+model.random_config={tiny}",
        f"+model.chat_template={TEMPLATES / f'{template}.jinja'}",
    ]


def paper_overrides(experiment: str, data_dir: Path) -> list[str]:
    model = experiment.split("_", 2)[2]
    stage = experiment.split("_")[1]
    source = "openr1_math" if stage == "sft" else "deepscaler"
    return [
        f"experiment={experiment}",
        *model_swap(model),
        "trainer=cpu",
        "logger=csv",
        f"data.train.path={data_dir / f'{source}.jsonl'}",
        f"data.test.path={DATA / 'math500' / 'test.jsonl'}",
        *SIZES,
    ]


def compose_train(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OpenR1-Math and DeepScaleR rows in their upstream fields, from MATH train problems
    (the training sets themselves are on the hub): 12 problems with a boxed answer."""
    folder = tmp_path_factory.mktemp("paper_data")
    rows = [json.loads(line) for line in (DATA / "math" / "train.jsonl").open()][:40]
    rows = [r for r in rows if last_boxed(r["solution"])][:12]
    with (folder / "openr1_math.jsonl").open("w") as openr1:
        for r in rows:
            trace = f"<think>\nLet me work it out.\n</think>\n{r['solution']}"
            openr1.write(
                json.dumps(
                    {
                        "problem": r["problem"],
                        "solution": r["solution"],
                        "answer": last_boxed(r["solution"]),
                        "generations": [trace],
                        "correctness_math_verify": [True],
                        "is_reasoning_complete": [True],
                    }
                )
                + "\n"
            )
    with (folder / "deepscaler.jsonl").open("w") as deepscaler:
        for r in rows:
            row = {"problem": r["problem"], "answer": last_boxed(r["solution"]), "solution": ""}
            deepscaler.write(json.dumps(row) + "\n")
    return folder


def test_the_paper_runs_of_one_family_differ_only_in_the_model_they_name(
    data_dir: Path,
) -> None:
    """Rehearsing one model per family covers every paper config: once the model is swapped for
    its tiny stand-in, `paper_<stage>_qwen3_{1_7b,4b,8b}` compose to the same run but for the
    model's name and hub path, and GRPO's decode batch (what fits the model's memory)."""
    composed: dict[tuple[str, str], list[dict]] = {}
    for experiment in PAPER_RUNS:
        cfg = OmegaConf.to_container(compose_train(paper_overrides(experiment, data_dir)))
        for key in ("name", "path"):
            cfg["model"].pop(key)
        cfg["stage"].pop("rollout_batch_size", None)
        stage, model = experiment.split("_")[1], experiment.split("_", 2)[2]
        composed.setdefault((stage, FAMILIES[model][0]), []).append(cfg)
    assert sorted(composed) == [
        ("grpo", "qwen2"),
        ("grpo", "qwen3"),
        ("sft", "qwen2"),
        ("sft", "qwen3"),
    ]
    for (stage, family), configs in composed.items():
        assert all(c == configs[0] for c in configs), (stage, family)


class FedInputs:
    """Every call of the base's decoder, as the token ids it read: an input embedding that is a
    row of the embedding table is that token, any other (a latent) is `"Z"`."""

    def __init__(self) -> None:
        self.calls: list[list[int | str]] = []

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        if ids is not None:
            row = ids[0]
            if mask is not None and mask.shape[1] == row.shape[0]:
                row = row[mask[0].bool()]  # the first row, without its left padding
            self.calls.append(row.tolist())
            return
        table = module.get_input_embeddings().weight
        hits = (embeds[0][:, None, :] == table[None]).all(-1)
        self.calls.append([int(h.nonzero()[0]) if h.any() else "Z" for h in hits])


def layout(tokenizer: Any, *pieces: str | list[str]) -> list[int | str]:
    """Expected ids: text pieces tokenized, lists (of "Z") kept."""
    out: list[int | str] = []
    for piece in pieces:
        out += (
            piece
            if isinstance(piece, list)
            else tokenizer(piece, add_special_tokens=False).input_ids
        )
    return out


PROMPTS = {
    # family -> (the thinking prompt, the non-thinking prompt `direct` is asked in); the
    # question as `prompt.user_template` of the paper data has it
    "qwen3": (
        "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    ),
    "deepseek_r1_distill": (
        "<｜User｜>{q}<｜Assistant｜><think>\n",
        "<｜User｜>{q}<｜Assistant｜><think>\n",
    ),
}
SPANS = {
    # family -> mode -> what the base reads between the prompt and the first decoded token
    "qwen3": {
        "lrt": ["<think>\n", ["Z"] * K, "\n</think>\n\n"],
        "nothink": ["<think>\n", PREFILL, "\n</think>\n\n"],
        "direct": [],
        "cot": ["<think>\n"],
    },
    "deepseek_r1_distill": {  # its template opens the thinking span itself
        "lrt": [["Z"] * K, "\n</think>\n\n"],
        "nothink": [PREFILL, "\n</think>\n\n"],
        "direct": ["\n</think>\n\n"],
        "cot": [],
    },
}


def question(problem: str) -> str:
    return f"{problem}\nPut the final answer in \\boxed{{}}."


def train_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "metrics.csv").open() as f:
        return [row for row in csv.DictReader(f) if row.get("train/loss")]


def assert_training_layout(fed: FedInputs, tokenizer: Any, family: str, rows: list[dict]) -> None:
    """The first training step's two decoder calls: the prompt (encoded once), then the thinking
    span with K latents followed at once by the target answer (teacher-forced)."""
    prompt, suffix = fed.calls[0], fed.calls[1]
    text = tokenizer.decode(prompt)
    row = next(r for r in rows if question(r["problem"]) in text)
    assert prompt == layout(tokenizer, PROMPTS[family][0].format(q=question(row["problem"])))
    span = layout(tokenizer, *SPANS[family]["lrt"])
    assert suffix[: len(span)] == span
    answer = tokenizer.decode([t for t in suffix[len(span) :] if t != "Z"])
    assert answer.lstrip().startswith(row["solution"][:40].strip())


def assert_eval_layout(lm: Any, fed: FedInputs, family: str, problem: str, data: Any) -> None:
    """What each evaluated mode feeds, in the code path `evaluate.py` decodes with."""
    from lrt.data.prompts import PromptConfig
    from lrt.data.records import Record
    from lrt.evaluation.predict import answer_batches
    from lrt.modes import DecodeConfig
    from lrt.schema import typed

    prompt = typed(PromptConfig, data.prompt, "data.prompt")
    record = Record(id="0", question=problem, answer="1")
    tok = lm.tokenizer
    for mode, label in (
        ("lrt", "lrt"),
        ("nothink", "nothink"),
        ("direct", "direct"),
        ("cot", "cot@2"),
    ):
        fed.calls.clear()
        settings = DecodeConfig(max_answer_tokens=2, budget=2)
        answer_batches(lm, "math", [record], prompt, [label], settings, [[0]])
        asked = PROMPTS[family][1 if mode == "direct" else 0].format(q=question(problem))
        assert fed.calls[0] == layout(tok, asked), mode
        span = layout(tok, *SPANS[family][mode])
        if span:
            assert fed.calls[1] == span, mode
            first = fed.calls[2]
        else:
            first = fed.calls[1]
        assert len(first) == 1 and isinstance(first[0], int), mode  # then one token at a time


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen3_1_7b", "deepseek_r1_distill_qwen_1_5b"])
def test_paper_sft_then_grpo_then_the_paper_evaluation(
    model: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_script
) -> None:
    from lrt.backbone import backbone_config, load_backbone
    from lrt.lm.latent_lm import LatentLM
    from lrt.reasoner import load_reasoner

    fed = FedInputs()
    build = LatentLM.__init__

    def hooked(self: LatentLM, *args: Any, **kwargs: Any) -> None:
        build(self, *args, **kwargs)
        self.base.get_decoder().register_forward_pre_hook(fed, with_kwargs=True)

    monkeypatch.setattr(LatentLM, "__init__", hooked)
    family = FAMILIES[model][1]
    rows = [json.loads(line) for line in (data_dir / "openr1_math.jsonl").open()]
    sft, grpo = tmp_path / "sft", tmp_path / "grpo"
    cfg = compose_train(
        [
            *paper_overrides(f"paper_sft_{model}", data_dir),
            "reasoner.init_from=base",
            f"run_dir={sft}",
        ]
    )
    train.run(cfg)
    tokenizer = load_backbone(backbone_config(cfg.model)).tokenizer
    assert_training_layout(fed, tokenizer, family, rows)
    cfg = compose_train(
        [
            *paper_overrides(f"paper_grpo_{model}", data_dir),
            f"init_from={sft / 'reasoner' / 'final'}",
            f"run_dir={grpo}",
        ]
    )
    train.run(cfg)
    for run in (sft, grpo):
        losses = [float(r["train/loss"]) for r in train_metrics(run)]
        assert losses and all(math.isfinite(x) for x in losses), (run, losses)
        for saved in ("reasoner/final", "reasoner/best", "checkpoints/last.ckpt"):
            assert (run / saved).exists(), (run, saved)

    backbone = load_backbone(backbone_config(cfg.model))
    lm = LatentLM(backbone, load_reasoner(grpo / "reasoner" / "final", backbone.name))
    assert_eval_layout(lm, fed, family, rows[0]["problem"], cfg.data)

    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        "preset=paper",
        f"checkpoints={grpo}",
        "limit=2",
        "max_answer_tokens=8",
        "cot_budgets=[4,8]",
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["decoding"].startswith("4 samples/question, T=0.6, top-p=0.95")
    rows = results["results"]
    tasks = {"math_local", "gsm8k_local", "lsat_local", "amc23_local"}
    assert {r["task"] for r in rows} == tasks
    for task in tasks:
        modes = {r["mode"]: r for r in rows if r["task"] == task}
        assert {"direct", "nothink", "lrt", "lrt-swap", "cot@4", "cot@8"} <= set(modes), task
        assert modes["lrt"]["checkpoint"] == "grpo/final" and modes["lrt"]["samples"] == 4
