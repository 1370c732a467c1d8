"""Checkpoint evaluation: decode and grade records in every inference mode, measure, report.

The pieces, from the inside out:

- `predict` runs one (base, reasoner) pair over records in one mode (DESIGN.md section 1:
  `lrt`, `nothink`, `cot`, `hybrid`) and grades every answer. A mode label may carry a thinking
  budget (`cot@256`, `hybrid@256`), so each budget is its own row of the results.
- `summarize` turns predictions into metrics: accuracy (pass@1), unbiased pass@k from n samples
  per question, generated tokens (mean, p50, p95), latency, throughput, truncations, and for
  `hybrid` the share of questions routed each way.
- `find_reasoners` turns what a user points at (a reasoner folder, a Lightning `.ckpt`, a run
  folder, a sweep folder) into the reasoners to evaluate.
- `evaluate` runs a whole `conf/evaluate.yaml` composition and writes the results folder.

`nothink` and `cot` never touch the reasoner, so they are evaluated once per task, under the
checkpoint label `base`; `lrt` and `hybrid` are evaluated once per reasoner. LoRA adapters of
the token-space baseline (`adapter=`, trained by `stage=grpo_cot`) change the base itself, so
each gets the base-only modes again under the label `adapter:<run>/final`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import lrt
from lrt import sampling
from lrt.build import backbone_from, load_reasoner
from lrt.config import check_path
from lrt.data.datamodule import load_split, split_config
from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.data.tasks import TASKS
from lrt.distributed import gather_objects, padded_shard, world
from lrt.errors import CheckpointError, ConfigError
from lrt.grading import extract, grade
from lrt.latent_lm import Generation, LatentLM, Prefix
from lrt.loggers import build_loggers
from lrt.plots import pareto_plot, sweep_plot
from lrt.reasoner import CONFIG_NAME, WEIGHTS_NAME
from lrt.report import print_table
from lrt.sampling import RowNoise

log = logging.getLogger("lrt.evaluate")

MODES = ("lrt", "nothink", "cot", "hybrid")
REASONER_MODES = ("lrt", "hybrid")
"""Modes that need a reasoner; the others depend on the base alone."""
BUDGET_MODES = ("cot", "hybrid")
"""Modes with an explicit thinking span, hence a token budget."""
RUN_REASONERS = ("final", "best", "both")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


# --- modes and decoding settings ------------------------------------------------------------


@dataclass
class DecodeConfig:
    """Decoding settings shared by every mode."""

    max_answer_tokens: int = 32
    budget: int = 256
    force_answer: str = "The answer is"
    temperature: float = 0.0
    top_p: float = 1.0
    hybrid_threshold: float = -0.5
    """`hybrid` re-does with `cot` the questions whose `lrt` answer has a mean token log-prob
    below this (-0.5: a geometric-mean token probability of about 0.6)."""


def parse_mode(label: str) -> tuple[str, int | None]:
    """`'cot@256'` -> `('cot', 256)`; `'lrt'` -> `('lrt', None)`; unknown modes are refused."""
    mode, _, budget = label.partition("@")
    if mode not in MODES:
        raise ConfigError(f"modes: unknown mode {label!r}; known modes: {', '.join(MODES)}")
    if not budget:
        return mode, None
    if mode not in BUDGET_MODES or not budget.isdigit() or int(budget) <= 0:
        raise ConfigError(
            f"modes: {label!r} is invalid; only {' and '.join(BUDGET_MODES)} take a positive "
            "budget after '@'"
        )
    return mode, int(budget)


def mode_labels(modes: Iterable[str], budgets: Sequence[int]) -> list[str]:
    """Expand `cot` and `hybrid` into one label per budget (`cot@256`, `cot@512`)."""
    labels: list[str] = []
    for label in modes:
        mode, budget = parse_mode(label)
        if mode in BUDGET_MODES and budget is None:
            if not budgets:
                raise ConfigError(f"cot_budgets must list at least one budget for mode {mode!r}")
            labels += [f"{mode}@{b}" for b in budgets]
        else:
            labels.append(label)
    return labels


# --- decoding and grading -------------------------------------------------------------------


@dataclass
class Prediction:
    """One graded answer: a row of `predictions.jsonl`."""

    id: str
    mode: str
    text: str
    extracted: str | None
    correct: bool
    tokens: int
    """Tokens the model generated itself for this answer (hybrid: lrt and cot together)."""
    latency_s: float
    """Wall time of the batch (prompt encode included) divided by its number of questions."""
    truncated: bool
    confidence: float
    """Mean log-prob of the answer tokens (hybrid: of the `lrt` answer, the gate's input)."""
    sample: int = 0
    route: str | None = None
    """`hybrid` only: `lrt` when the gate kept the latent answer, else `cot`."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Answer:
    """One decoded row before grading."""

    text: str
    tokens: int
    truncated: bool
    confidence: float
    route: str | None = None


def _answers(gen: Generation, route: str | None = None) -> list[_Answer]:
    return [
        _Answer(text, n, trunc, float(conf), route)
        for text, n, trunc, conf in zip(
            gen.texts, gen.num_generated, gen.truncated, gen.mean_logprob, strict=True
        )
    ]


def select_rows(prefix: Prefix, rows: Sequence[int]) -> Prefix:
    """A prefix holding only `rows` (its own cache copy), so hybrid re-uses the prompt encode."""
    index = torch.tensor(rows, device=prefix.mask.device)
    cache = copy.deepcopy(prefix.cache)
    cache.batch_select_indices(index)
    return Prefix(
        cache, prefix.mask[index], prefix.hidden[index], prefix.last_logits[index], prefix.opened
    )


def _decode(
    lm: LatentLM,
    prefix: Prefix,
    mode: str,
    decode: DecodeConfig,
    noise: RowNoise,
    all_done: Callable[[bool], bool] | None = None,
) -> list[_Answer]:
    """Generate every row of `prefix` in `mode`; hybrid gates `lrt` answers into `cot`."""

    def run(p: Prefix, m: str, rows: RowNoise) -> Generation:
        return lm.generate(
            p,
            m,
            max_answer_tokens=decode.max_answer_tokens,
            budget=decode.budget,
            force_answer=decode.force_answer,
            temperature=decode.temperature,
            top_p=decode.top_p,
            noise=rows,
            all_done=all_done,
        )

    if mode != "hybrid":
        return _answers(run(prefix, mode, noise))
    answers = _answers(run(prefix, "lrt", noise), route="lrt")
    # Written as "not >=" so a NaN confidence (no answer tokens to score) also goes to cot.
    low = [i for i, a in enumerate(answers) if not a.confidence >= decode.hybrid_threshold]
    if low:
        index = torch.tensor(low)
        redone = _answers(run(select_rows(prefix, low), "cot", noise.select(index)), route="cot")
        for i, again in zip(low, redone, strict=True):
            # The latent attempt was paid for too, so its tokens count; the gate's input stays.
            answers[i] = replace(
                again, tokens=answers[i].tokens + again.tokens, confidence=answers[i].confidence
            )
    return answers


def predict(
    lm: LatentLM,
    task: str,
    records: Sequence[Record],
    prompt: PromptConfig,
    mode: str,
    decode: DecodeConfig,
    batch_size: int = 16,
    seed: int = 0,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    samples: int = 1,
    all_done: Callable[[bool], bool] | None = None,
) -> list[Prediction]:
    """Decode and grade `records` in `mode` (a label such as `cot@256`), batched.

    With `samples` > 1 every question is answered that many times from one prompt encode (the
    cache is repeated, not recomputed); set `decode.temperature` > 0 or the samples coincide.
    A sample's randomness is a function of (seed, question position, sample number) alone,
    so it does not depend on the batch size or on what ran before.
    """
    base_mode, budget = parse_mode(mode)
    if budget is not None:
        decode = replace(decode, budget=budget)
    if samples < 1:
        raise ConfigError(f"samples={samples} must be at least 1")
    system = lm.backbone.config.system_prompt
    stream = sampling.key(seed)
    out: list[Prediction] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        t0 = time.perf_counter()
        prompts = [format_prompt(lm.tokenizer, r, prompt, system) for r in batch]
        prefix = lm.encode(*lm.tokenize_prompts(prompts))
        if samples > 1:
            prefix = prefix.fork(samples)
        rows = torch.arange(start * samples, (start + len(batch)) * samples, device=lm.device)
        answers = _decode(lm, prefix, base_mode, decode, RowNoise(stream, rows), all_done)
        per_q = (time.perf_counter() - t0) / len(batch)
        keys = [(r, s) for r in batch for s in range(samples)]
        rows = [
            Prediction(
                id=r.id,
                mode=mode,
                text=a.text,
                extracted=extract(task, a.text),
                correct=grade(task, a.text, r),
                tokens=a.tokens,
                latency_s=per_q,
                truncated=a.truncated,
                confidence=a.confidence,
                sample=s,
                route=a.route,
            )
            for (r, s), a in zip(keys, answers, strict=True)
        ]
        out.extend(rows)
        if on_batch is not None:
            on_batch(rows)
    return out


# --- metrics --------------------------------------------------------------------------------


def accuracy(predictions: Sequence[Prediction]) -> float:
    return sum(p.correct for p in predictions) / max(len(predictions), 1)


def mean_tokens(predictions: Sequence[Prediction]) -> float:
    return sum(p.tokens for p in predictions) / max(len(predictions), 1)


def mode_rows(
    lm: LatentLM,
    task: str,
    records: Sequence[Record],
    prompt: PromptConfig,
    modes: Sequence[str],
    decode: DecodeConfig,
    batch_size: int,
    seed: int,
    all_done: Callable[[bool], bool] | None = None,
) -> list[dict[str, Any]]:
    """`mode`, `questions`, `accuracy` and `mean_tokens` of each mode on the same records: the
    held-out table a training stage prints when it ends.

    Under data parallelism every rank decodes its own shard of the records (padded so that
    all ranks run the same batches, with `all_done` keeping their decoding in step) and the
    predictions are gathered, so every rank returns the table of the whole set.
    """
    rank, size = world()
    mine, real = padded_shard(records, rank, size)
    rows = []
    for mode in modes:
        preds = predict(lm, task, mine, prompt, mode, decode, batch_size, seed, all_done=all_done)[
            :real
        ]
        preds = [p for part in gather_objects(preds) for p in part]
        rows.append(
            {
                "mode": mode,
                "questions": len(preds),
                "accuracy": accuracy(preds),
                "mean_tokens": mean_tokens(preds),
            }
        )
    return rows


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `c` correct out of `n` samples: `1 - C(n-c, k) / C(n, k)`.

    The chance that k samples drawn without replacement from the n contain a correct one
    (Chen et al., 2021); exact integer binomials, so large n loses no precision.
    """
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(
    predictions: Sequence[Prediction], ks: Sequence[int] = (), wall_s: float | None = None
) -> dict[str, Any]:
    """Metrics of one (checkpoint, task, mode): every key is present, None where undefined.

    `accuracy` is pass@1 averaged over all samples (greedy: one sample per question).
    `questions_per_s` is questions over `wall_s` (grading included) when given, else derived
    from the per-question latency.
    """
    per_question: dict[str, list[bool]] = {}
    for p in predictions:
        per_question.setdefault(p.id, []).append(p.correct)
    questions = len(per_question)
    tokens = np.array([p.tokens for p in predictions], dtype=float)
    latency = sum(p.latency_s for p in predictions) / max(len(predictions), 1)
    metrics: dict[str, Any] = {
        "questions": questions,
        "samples": len(predictions) // max(questions, 1),
        "accuracy": accuracy(predictions),
    }
    for k in ks:
        metrics[f"pass@{k}"] = sum(
            pass_at_k(len(c), sum(c), k) for c in per_question.values()
        ) / max(questions, 1)
    routes = [p.route for p in predictions if p.route is not None]
    metrics |= {
        "mean_tokens": float(tokens.mean()) if len(tokens) else 0.0,
        "p50_tokens": float(np.percentile(tokens, 50)) if len(tokens) else 0.0,
        "p95_tokens": float(np.percentile(tokens, 95)) if len(tokens) else 0.0,
        "mean_latency_s": latency,
        "questions_per_s": (
            questions / wall_s if wall_s else (1.0 / latency if latency > 0 else 0.0)
        ),
        "truncated": sum(p.truncated for p in predictions),
        "routed_lrt": routes.count("lrt") / len(routes) if routes else None,
        "routed_cot": routes.count("cot") / len(routes) if routes else None,
    }
    return metrics


# --- finding reasoners ----------------------------------------------------------------------


def _is_reasoner(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def _is_run(path: Path) -> bool:
    """A train.py run folder; `.hydra` alone marks one that failed before saving anything."""
    return any((path / name).exists() for name in ("reasoner", "checkpoints", ".hydra"))


def _natural(path: Path) -> list[Any]:
    """Sort key so Hydra's job folders come in job order (`2_...` before `10_...`)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _run_reasoners(run: Path, pick: str) -> list[Path]:
    """The exported reasoner(s) of a run; its last Lightning checkpoint when none was exported."""
    best, final = run / "reasoner" / "best", run / "reasoner" / "final"
    order = {"final": (final, best), "best": (best, final), "both": (best, final)}[pick]
    found = [p for p in order if _is_reasoner(p)]
    if pick != "both":
        found = found[:1]
    last = run / "checkpoints" / "last.ckpt"
    if not found and last.is_file():
        found = [last]
    if not found:
        log.warning("run folder %s holds no reasoner yet; skipped", run)
    return found


def _search(path: Path, pick: str) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".ckpt" else []
    if _is_reasoner(path):
        return [path]
    if _is_run(path):
        return _run_reasoners(path, pick)
    children = sorted((c for c in path.iterdir() if not c.name.startswith(".")), key=_natural)
    return [found for child in children for found in _search(child, pick)]


def find_reasoners(path: str | Path, pick: str = "final") -> list[Path]:
    """Every reasoner under `path`, in a stable order.

    `path` may be a reasoner folder (`config.json` + `model.safetensors`), a Lightning `.ckpt`
    file, a run folder of train.py, or any folder above run folders (a Hydra multirun sweep,
    searched recursively; hidden folders such as `.hydra` are skipped). From a run folder,
    `pick='final'` takes `reasoner/final` (the weights at the end of training, what the run's
    own final comparison measured), `'best'` takes `reasoner/best` (best validation accuracy),
    each falling back to the other, and `'both'` takes both. A run that exported neither (it
    was stopped early) contributes `checkpoints/last.ckpt`.
    """
    if pick not in RUN_REASONERS:
        raise ConfigError(f"run_reasoner={pick!r} is not one of {RUN_REASONERS}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_file() and path.suffix != ".ckpt":
        raise CheckpointError(f"{path} is neither a reasoner folder nor a Lightning .ckpt file")
    found = _search(path, pick)
    if not found:
        raise CheckpointError(f"no reasoner folder, .ckpt file or run folder found under {path}")
    return found


def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: `<run>/final` inside a run folder, else the file or folder name."""
    labels = [
        f"{p.parents[1].name}/{p.name}" if p.parent.name in ("reasoner", "checkpoints") else p.name
        for p in paths
    ]
    if len(set(labels)) < len(labels):
        return [str(p) for p in paths]
    return labels


def run_folder(path: Path) -> Path | None:
    """The train.py run folder a found reasoner belongs to (the one holding `.hydra`)."""
    for parent in [path, *path.parents][:4]:
        if (parent / ".hydra").is_dir():
            return parent
    return None


def read_overrides(run: Path) -> dict[str, str]:
    """The command-line overrides of a Hydra run (`.hydra/overrides.yaml`), as key -> value."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = (str(item).lstrip("+~").partition("=") for item in OmegaConf.load(path))
    return {key: value for key, _, value in pairs}


def swept_keys(overrides: Sequence[Mapping[str, str]]) -> list[str]:
    """Keys whose value differs between runs (every key when there is a single run)."""
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    if len(overrides) < 2:
        return keys
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


# --- a whole evaluation from conf/evaluate.yaml ---------------------------------------------


@dataclass
class EvalTask:
    """One task to evaluate: its label (the data config name), grader name and test records."""

    name: str
    task: str
    records: list[Record]
    prompt: PromptConfig


@dataclass
class Checkpoint:
    """A reasoner to evaluate (None: the bare base)."""

    label: str
    path: Path | None
    lm: LatentLM
    sweep_run: Path | None = None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def validate_evaluate(cfg: DictConfig) -> list[str]:
    """Check an `evaluate.yaml` composition before any model loads; returns the mode labels."""
    if any(int(b) <= 0 for b in cfg.cot_budgets):
        raise ConfigError(f"cot_budgets={list(cfg.cot_budgets)} must be positive integers")
    labels = mode_labels(_as_list(cfg.modes), [int(b) for b in cfg.cot_budgets])
    if not labels:
        raise ConfigError("modes must list at least one mode")
    has_reasoner = bool(_as_list(cfg.get("checkpoints")) or _as_list(cfg.get("sweep_dir")))
    if not has_reasoner and all(parse_mode(m)[0] in REASONER_MODES for m in labels):
        raise ConfigError(
            f"modes={_as_list(cfg.modes)} all need a reasoner; set checkpoints or sweep_dir"
        )
    for key in ("batch_size", "max_answer_tokens"):
        if int(cfg[key]) <= 0:
            raise ConfigError(f"{key}={cfg[key]} must be positive")
    if cfg.limit is not None and int(cfg.limit) <= 0:
        raise ConfigError(f"limit={cfg.limit} must be positive (or null for the whole split)")
    if cfg.run_reasoner not in RUN_REASONERS:
        raise ConfigError(f"run_reasoner={cfg.run_reasoner!r} is not one of {RUN_REASONERS}")
    for key in ("checkpoints", "sweep_dir", "adapter"):
        for path in _as_list(cfg.get(key)):
            check_path(key, path)
    pk = cfg.pass_at_k
    if int(pk.n) < 0:
        raise ConfigError(f"pass_at_k.n={pk.n} must be 0 (greedy only) or positive")
    if int(pk.n) > 0:
        if float(pk.temperature) <= 0:
            raise ConfigError(f"pass_at_k.temperature={pk.temperature} must be > 0 to sample")
        for k in pk.k:
            if not 0 < int(k) <= int(pk.n):
                raise ConfigError(f"pass_at_k.k={k} must be between 1 and pass_at_k.n={pk.n}")
    return labels


def _data_choice() -> str | None:
    """The option chosen for the `data` group, when running under @hydra.main."""
    return HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None


def _compose_data(name: str, paths: DictConfig) -> DictConfig:
    """`conf/data/<name>.yaml` as Hydra composes it (its own defaults list included)."""

    def load() -> DictConfig:
        try:
            composed = compose(config_name="evaluate", overrides=[f"data={name}"])
        except MissingConfigException as err:
            options = GlobalHydra.instance().config_loader().get_group_options("data")
            raise ConfigError(
                f"tasks: unknown task {name!r}; known data configs: {', '.join(options)}"
            ) from err
        composed.paths = paths  # ${paths.data_dir} resolves against this run's paths
        return composed.data

    if GlobalHydra.instance().is_initialized():
        return load()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load()


def load_tasks(cfg: DictConfig) -> list[EvalTask]:
    """The test split of every task in `cfg.tasks` (null: the `data` group), `limit` applied.

    The option chosen for `data` is taken as composed, so `data.test.path=...` overrides work;
    any other task is composed from `conf/data/<name>.yaml` by the Hydra compose API.
    """
    names = _as_list(cfg.get("tasks"))
    chosen = _data_choice()
    if not names:
        names = [chosen or str(cfg.data.task)]
        chosen = names[0]
    tasks = []
    for name in names:
        data = cfg.data if name == chosen else _compose_data(name, cfg.paths)
        where = "data" if name == chosen else f"tasks.{name}"
        if data.task not in TASKS:
            raise ConfigError(
                f"{where}.task={data.task!r} is not a known task ({', '.join(sorted(TASKS))})"
            )
        split = split_config(data.test, "test")
        check_path(f"{where}.test.path", split.path)
        if cfg.limit is not None:
            split.limit = int(cfg.limit)
        options = dict(data.get("options") or {})
        records = load_split(data.task, split, data.on_error, options)
        tasks.append(EvalTask(name, str(data.task), records, PromptConfig(**dict(data.prompt))))
        log.info("%s: %d test questions", name, len(records))
    return tasks


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_checkpoints(cfg: DictConfig, lm_base: LatentLM) -> list[Checkpoint]:
    """Every reasoner named by `checkpoints` and `sweep_dir`, loaded (and checked) up front.

    Loading them all before decoding anything means a sweep holding one reasoner for another
    base model fails at once with its CheckpointError, not hours into the evaluation.
    """
    sources = [(p, False) for p in _as_list(cfg.get("checkpoints"))]
    sources += [(p, True) for p in _as_list(cfg.get("sweep_dir"))]
    found = [
        (path, sweep) for src, sweep in sources for path in find_reasoners(src, cfg.run_reasoner)
    ]
    labels = checkpoint_labels([p for p, _ in found])
    backbone = lm_base.backbone
    out = []
    for label, (path, sweep) in zip(labels, found, strict=True):
        reasoner = load_reasoner(path, backbone).to(lm_base.device).eval()
        lm = LatentLM(backbone, reasoner).to(lm_base.device)
        out.append(Checkpoint(label, path, lm, run_folder(path) if sweep else None))
        log.info("reasoner %s: %s (K=%d)", label, path, reasoner.num_latents)
    return out


def load_adapters(cfg: DictConfig, lm_base: LatentLM) -> list[Checkpoint]:
    """Every LoRA adapter named by `adapter`, merged into its own copy of the base, up front
    (an adapter for another base fails before anything is decoded)."""
    from lrt.adapter import adapter_label, find_adapter, merged_backbone

    out = []
    for source in _as_list(cfg.get("adapter")):
        folder = find_adapter(source)
        backbone = merged_backbone(folder, lm_base.backbone)
        label = adapter_label(folder)
        out.append(Checkpoint(label, folder, LatentLM(backbone).to(lm_base.device)))
        log.info("adapter %s: %s (merged into a copy of the base)", label, folder)
    return out


def versions() -> dict[str, str]:
    """Package versions recorded with every result, so numbers can be traced to code."""
    out = {"python": platform.python_version(), "lrt": lrt.__version__}
    for package in ("torch", "transformers", "lightning", "hydra-core"):
        out[package] = metadata.version(package)
    return out


def _table_row(row: Mapping[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """The columns of `results.md` (results.json has every metric)."""
    routed = (
        f"lrt {row['routed_lrt']:.0%} / cot {row['routed_cot']:.0%}"
        if row["routed_lrt"] is not None
        else ""
    )
    return {
        "checkpoint": row["checkpoint"],
        "task": row["task"],
        "mode": row["mode"],
        "questions": row["questions"],
        "accuracy": row["accuracy"],
        **{f"pass@{k}": row[f"pass@{k}"] for k in ks},
        "mean tokens": row["mean_tokens"],
        "p50": row["p50_tokens"],
        "p95": row["p95_tokens"],
        "latency s/q": row["mean_latency_s"],
        "q/s": row["questions_per_s"],
        "truncated": row["truncated"],
        "routed": routed,
    }


def _sweep_rows(
    rows: Sequence[Mapping[str, Any]], checkpoints: Sequence[Checkpoint]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (swept run, task, mode) with the run's swept override values."""
    runs = {c.label: read_overrides(c.sweep_run) for c in checkpoints if c.sweep_run is not None}
    keys = swept_keys(list(runs.values()))
    table = [
        {
            "run": r["checkpoint"],
            **{k: runs[r["checkpoint"]].get(k, "") for k in keys},
            "task": r["task"],
            "mode": r["mode"],
            "accuracy": r["accuracy"],
            "mean_tokens": r["mean_tokens"],
        }
        for r in rows
        if r["checkpoint"] in runs
    ]
    return table, keys


def _log_to_loggers(
    cfg: DictConfig,
    out_dir: Path,
    config: dict[str, Any],
    rows: Sequence[Mapping[str, Any]],
    table: Sequence[Mapping[str, Any]],
    images: Mapping[str, Path],
) -> None:
    """wandb gets the table and the plots; other loggers get every metric as a scalar."""
    for logger in build_loggers(cfg.get("logger"), str(out_dir)):
        logger.log_hyperparams(config)
        if isinstance(logger, WandbLogger):
            columns = list(table[0])
            logger.log_table("eval/results", columns, [[r[c] for c in columns] for r in table])
            for name, path in images.items():
                logger.log_image(f"eval/{name}", [str(path)])
        else:
            logger.log_metrics(
                {
                    f"{r['checkpoint']}/{r['task']}/{r['mode']}/{key}": float(value)
                    for r in rows
                    for key, value in r.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                },
                step=0,
            )
        logger.finalize("success")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
    )


def _warm_up(jobs: Sequence[tuple[Checkpoint, str]], task: EvalTask, decode: DecodeConfig) -> None:
    """Decode one question per model untimed, so one-off start-up costs (kernel selection, CUDA
    context, allocator growth) do not land in the latency of whichever job comes first."""
    short = replace(decode, max_answer_tokens=1, budget=1)
    warmed: set[int] = set()
    for ckpt, mode in jobs:
        if id(ckpt.lm) not in warmed:
            predict(ckpt.lm, task.task, task.records[:1], task.prompt, mode, short)
            warmed.add(id(ckpt.lm))


def run_jobs(
    jobs: Sequence[tuple[Checkpoint, str]],
    tasks: Sequence[EvalTask],
    decode: DecodeConfig,
    predictions: Path,
    batch_size: int,
    seed: int,
    samples: int = 1,
    ks: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """Every (task, checkpoint, mode): predictions appended to `predictions`, one metrics row each.

    A progress bar per job shows the running accuracy.
    """
    _warm_up(jobs, tasks[0], decode)
    rows: list[dict[str, Any]] = []
    with predictions.open("w") as jsonl, _progress() as progress:
        for task in tasks:
            for ckpt, mode in jobs:
                bar = progress.add_task(
                    f"{ckpt.label} · {task.name} · {mode}",
                    total=len(task.records) * samples,
                    acc=0.0,
                )
                seen: list[bool] = []

                def on_batch(batch: list[Prediction], bar: Any = bar, seen: list = seen) -> None:
                    seen.extend(p.correct for p in batch)
                    progress.update(bar, advance=len(batch), acc=sum(seen) / len(seen))

                t0 = time.perf_counter()
                preds = predict(
                    ckpt.lm,
                    task.task,
                    task.records,
                    task.prompt,
                    mode,
                    decode,
                    batch_size=batch_size,
                    seed=seed,
                    on_batch=on_batch,
                    samples=samples,
                )
                wall = time.perf_counter() - t0
                for p in preds:
                    row = {"checkpoint": ckpt.label, "task": task.name, **p.to_dict()}
                    jsonl.write(json.dumps(row) + "\n")
                rows.append(
                    {
                        "checkpoint": ckpt.label,
                        "checkpoint_path": str(ckpt.path) if ckpt.path else None,
                        "task": task.name,
                        "mode": mode,
                        **summarize(preds, ks, wall),
                    }
                )
    return rows


def model_given() -> bool:
    """Whether the command line chose the `model` group or set a key of it (outside Hydra's
    main the caller composed `cfg.model` itself, which counts as given)."""
    if not HydraConfig.initialized():
        return True
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return any(k == "model" or k.startswith("model.") for k in keys)


def recorded_base_config(path: Path) -> dict[str, Any] | None:
    """The `model` config a reasoner folder, Lightning checkpoint or adapter recorded."""
    from lrt.adapter import META_NAME
    from lrt.build import read_checkpoint
    from lrt.reasoner import read_config

    if (path / META_NAME).is_file():
        return json.loads((path / META_NAME).read_text()).get("base_config")
    if path.is_file():
        return read_checkpoint(path)["lrt"]["reasoner_config"].get("base_config")
    return read_config(path).base_config


def take_recorded_model(cfg: DictConfig) -> None:
    """Without `model=` on the command line, evaluate on the base the checkpoints were trained
    for (as they recorded it); a `model=` that contradicts them is refused when they load."""
    if model_given():
        return
    from lrt.adapter import find_adapter

    paths = [
        p for src in _as_list(cfg.get("checkpoints")) for p in find_reasoners(src, cfg.run_reasoner)
    ]
    paths += [
        p for src in _as_list(cfg.get("sweep_dir")) for p in find_reasoners(src, cfg.run_reasoner)
    ]
    paths += [find_adapter(src) for src in _as_list(cfg.get("adapter"))]
    recorded = {json.dumps(c, sort_keys=True) for p in paths if (c := recorded_base_config(p))}
    if len(recorded) > 1:
        names = sorted(json.loads(c)["name"] for c in recorded)
        raise ConfigError(
            f"the checkpoints were trained for different base models ({', '.join(names)}); "
            "evaluate them separately or pass model="
        )
    if recorded:
        with open_dict(cfg):
            cfg.model = OmegaConf.create(json.loads(recorded.pop()))
        log.info("base model %s, as the checkpoints recorded it", cfg.model.name)


def evaluate(cfg: DictConfig) -> Path:
    """Run an `evaluate.yaml` composition and write its results folder; returns the folder.

    Writes `results.json` (every metric, the resolved config, package versions),
    `predictions.jsonl`, `results.md`, `pareto.png` and, for reasoners found through
    `sweep_dir`, `sweep.md` and `sweep.png`.
    """
    labels = validate_evaluate(cfg)
    if cfg.output_dir is None:
        if not HydraConfig.initialized():
            raise ConfigError("output_dir must be set when evaluate() runs outside @hydra.main")
        with open_dict(cfg):
            cfg.output_dir = HydraConfig.get().runtime.output_dir
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = load_tasks(cfg)
    take_recorded_model(cfg)
    backbone = backbone_from(cfg)
    backbone.model.to(_device(cfg.device))
    base = LatentLM(backbone).to(backbone.device)
    log.info("base %s on %s", backbone.name, backbone.device)
    checkpoints = load_checkpoints(cfg, base)
    adapters = load_adapters(cfg, base)

    base_labels = [m for m in labels if parse_mode(m)[0] not in REASONER_MODES]
    reasoner_labels = [m for m in labels if parse_mode(m)[0] in REASONER_MODES]
    if reasoner_labels and not checkpoints:
        log.warning(
            "modes %s need a reasoner and are skipped: pass checkpoints=<path> or sweep_dir=<path>",
            ", ".join(reasoner_labels),
        )
    jobs = [(Checkpoint("base", None, base), m) for m in base_labels]
    jobs += [(a, m) for a in adapters for m in base_labels]
    jobs += [(c, m) for c in checkpoints for m in reasoner_labels]

    pk = cfg.pass_at_k
    sampling = int(pk.n) > 0
    decode = DecodeConfig(
        max_answer_tokens=int(cfg.max_answer_tokens),
        force_answer=str(cfg.force_answer),
        temperature=float(pk.temperature) if sampling else 0.0,
        top_p=float(pk.top_p) if sampling else 1.0,
        hybrid_threshold=float(cfg.hybrid.threshold),
    )
    samples = max(int(pk.n), 1)
    ks = [int(k) for k in pk.k] if sampling else []
    rows = run_jobs(
        jobs,
        tasks,
        decode,
        out_dir / "predictions.jsonl",
        int(cfg.batch_size),
        int(cfg.seed),
        samples,
        ks,
    )

    decoding = (
        f"{samples} samples/question, T={decode.temperature}, top-p={decode.top_p}"
        if sampling
        else "greedy"
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    result = {"decoding": decoding, "results": rows, "config": config, "versions": versions()}
    table = [_table_row(r, ks) for r in rows]
    print_table(f"evaluation ({decoding})", table, path=out_dir / "results.md")
    images = {"pareto": pareto_plot(rows, out_dir / "pareto.png")}
    sweep, keys = _sweep_rows(rows, checkpoints)
    if sweep:
        print_table(f"sweep over {', '.join(keys) or 'runs'}", sweep, path=out_dir / "sweep.md")
        images["sweep"] = sweep_plot(sweep, keys, out_dir / "sweep.png")
        result["sweep"] = {"keys": keys, "rows": sweep}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    _log_to_loggers(cfg, out_dir, config, rows, table, images)
    log.info("results in %s", out_dir)
    return out_dir
