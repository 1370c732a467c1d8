"""Decode and grade records in one inference mode, batched: the rows of `predictions.jsonl`.

`predict` runs one (base, reasoner) pair over records in one mode (`lrt/modes.py`) and grades
every answer with the task's grader; `mode_rows` is the short held-out table a training stage
prints when it ends, decoded in shards under data parallelism.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.distributed import gather_objects, world
from lrt.errors import ConfigError
from lrt.evaluation.metrics import compare_to_best_baseline, compare_to_swap, summarize
from lrt.evaluation.prediction import Prediction
from lrt.grading import extract, grade
from lrt.lm import sampling
from lrt.lm.decoding import Generation
from lrt.lm.latent_lm import LatentLM
from lrt.lm.prefix import Prefix
from lrt.lm.sampling import RowNoise
from lrt.modes import DecodeConfig, mode_of, parse_mode
from lrt.reasoner import latent_spread


@dataclass
class _Answer:
    """One decoded row before grading."""

    text: str
    answer: str
    """The part of `text` that is graded (`Generation.answer_texts`)."""
    tokens: int
    after_prompt: int
    """Positions after the prompt: thinking-span inputs plus every token fed back."""
    truncated: bool
    confidence: float
    route: str | None = None
    first_token_at: float = 0.0
    probe_tokens: int = 0


def _answers(gen: Generation, span: int, route: str | None = None) -> list[_Answer]:
    rows = len(gen.texts)
    probes = gen.probe_tokens or [0] * rows
    extra = gen.extra_positions or [0] * rows
    return [
        _Answer(
            text, answer, n, span + len(ids) + e, trunc, float(conf), route, gen.first_token_at, p
        )
        for text, answer, n, ids, trunc, conf, p, e in zip(
            gen.texts,
            gen.answer_texts,
            gen.num_generated,
            gen.token_ids,
            gen.truncated,
            gen.mean_logprob,
            probes,
            extra,
            strict=True,
        )
    ]


def swapped(latents: torch.Tensor, samples: int = 1) -> torch.Tensor:
    """Latents of a batch whose rows are `samples` rows per question, each question's replaced
    by the next question's (the last takes the first's): a derangement fixed by the batch."""
    questions = latents.shape[0] // samples
    if questions < 2:
        raise ConfigError("mode lrt-swap needs at least two questions in a batch")
    grouped = latents.reshape(questions, samples, *latents.shape[1:])
    return grouped.roll(-1, dims=0).reshape(latents.shape)


def batch_starts(n: int, batch_size: int, modes: Sequence[str]) -> list[int]:
    """Where each batch of `n` ordered questions starts; with `lrt-swap` a last batch of one
    question joins the batch before it, since a question cannot swap latents with itself."""
    starts = list(range(0, n, batch_size))
    if "lrt-swap" in modes and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


LATENT_MODES = ("lrt", "lrt-swap", "lrt-blind")
"""The modes that decode with the reasoner's latents of the batch (`hybrid` computes its own)."""


def decode(
    lm: LatentLM,
    prefix: Prefix,
    mode: str,
    settings: DecodeConfig,
    noise: RowNoise,
    all_done: Callable[[bool], bool] | None = None,
    samples: int = 1,
    latents: torch.Tensor | None = None,
) -> list[_Answer]:
    """Generate every row of `prefix` in `mode`; hybrid gates `lrt` answers into `cot`;
    `lrt-swap` decodes each question with the latents of the next question of the batch (its
    rows hold `samples` consecutive samples per question). `latents`: the reasoner's for
    `prefix`, when the caller has them already (else computed here)."""

    def run(p: Prefix, m: str, rows: RowNoise, route: str | None = None) -> list[_Answer]:
        z = None
        if m in LATENT_MODES:
            z = latents if latents is not None and p is prefix else lm.reason(p)
        if z is not None and settings.latent_noise > 0:
            sigma = settings.latent_noise * lm.backbone.embedding_rms()
            shape = tuple(z.shape[1:])
            z = z + sigma * rows.gaussian(shape, z.device).to(z.dtype)
        if m == "lrt-swap":
            z = swapped(z, samples)
        if m in LATENT_MODES:  # `lrt-blind`'s prefix withholds the question (`encoding`)
            m = "lrt"
        gen = lm.generate(
            p,
            m,
            latents=z,
            max_answer_tokens=settings.max_answer_tokens,
            budget=settings.budget,
            force_answer=settings.force_answer,
            temperature=settings.temperature,
            top_p=settings.top_p,
            noise=rows,
            all_done=all_done,
        )
        return _answers(gen, lm.span_positions(m, p.opened), route)

    if mode != "hybrid":
        return run(prefix, mode, noise)
    answers = run(prefix, "lrt", noise, route="lrt")
    # Written as "not >=" so a NaN confidence (no answer tokens to score) also goes to cot.
    low = [i for i, a in enumerate(answers) if not a.confidence >= settings.hybrid_threshold]
    if low:
        rows = torch.tensor(low, device=prefix.mask.device)
        redone = run(prefix.rows(rows), "cot", noise.select(torch.tensor(low)), "cot")
        for i, again in zip(low, redone, strict=True):
            # The latent attempt was paid for too, so its cost counts; the gate's input stays.
            first = answers[i]
            answers[i] = replace(
                again,
                tokens=first.tokens + again.tokens,
                after_prompt=first.after_prompt + again.after_prompt,
                confidence=first.confidence,
                first_token_at=first.first_token_at,
            )
    return answers


def prompt_variant(lm: LatentLM, mode: str) -> tuple[str | None, bool]:
    """(system line, thinking) of the prompt `mode` is asked in."""
    config = lm.backbone.config
    system = config.baseline_system_prompt if mode_of(mode).baseline else config.system_prompt
    return system, parse_mode(mode)[0] != "direct"


def encoding(lm: LatentLM, mode: str) -> tuple[str | None, bool, bool]:
    """(system line, thinking, blind) of `mode`'s encode: modes with the same one share one
    encode of each question; `lrt-blind`'s withholds the question from the base."""
    return (*prompt_variant(lm, mode), parse_mode(mode)[0] == "lrt-blind")


def length_batches(
    lm: LatentLM,
    records: Sequence[Record],
    prompt: PromptConfig,
    modes: Sequence[str],
    batch_size: int,
) -> list[list[int]]:
    """The batches `predict_modes` decodes, as record positions: the records ordered by prompt
    length (less padding) and cut every `batch_size` (`batch_starts`)."""
    if not modes or not records:
        return []
    system, thinking = prompt_variant(lm, modes[0])
    texts = [format_prompt(lm.tokenizer, r, prompt, system, thinking) for r in records]
    lengths = [len(ids) for ids in lm.tokenizer(texts, add_special_tokens=False).input_ids]
    order = sorted(range(len(records)), key=lambda i: lengths[i])
    starts = batch_starts(len(order), batch_size, modes)
    return [order[a:b] for a, b in zip(starts, [*starts[1:], len(order)], strict=True)]


def predict_modes(
    lm: LatentLM,
    task: str,
    records: Sequence[Record],
    prompt: PromptConfig,
    modes: Sequence[str],
    settings: DecodeConfig,
    batch_size: int = 16,
    seed: int = 0,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    samples: int = 1,
    all_done: Callable[[bool], bool] | None = None,
) -> dict[str, list[Prediction]]:
    """Decode and grade `records` in every mode of `modes` (labels such as `cot@256`).

    Questions are batched by prompt length (`length_batches`), and each batch is encoded once
    per prompt variant and decoded in every mode that shares it, from forks of one KV cache; a
    mode's `batch_time_s` is that encode plus its own decoding, as if it had run alone.
    With `samples` > 1 every question is answered that many times from one encode; set
    `settings.temperature` > 0 or the samples coincide. A sample's randomness is a function
    of (seed, question position, sample number) alone, whatever the batching.
    """
    batches = length_batches(lm, records, prompt, modes, batch_size)
    out = answer_batches(
        lm, task, records, prompt, modes, settings, batches, seed, on_batch, samples, all_done
    )
    return {m: [p for p in preds if p is not None] for m, preds in out.items()}


def answer_batches(
    lm: LatentLM,
    task: str,
    records: Sequence[Record],
    prompt: PromptConfig,
    modes: Sequence[str],
    settings: DecodeConfig,
    batches: Sequence[Sequence[int]],
    seed: int = 0,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    samples: int = 1,
    all_done: Callable[[bool], bool] | None = None,
) -> dict[str, list[Prediction | None]]:
    """`predict_modes` over the given batches of record positions: per mode, one slot per
    (record, sample), `None` where no batch held the record."""
    if samples < 1:
        raise ConfigError(f"samples={samples} must be at least 1")
    variants: dict[tuple[str | None, bool], list[str]] = {}
    for mode in modes:
        variants.setdefault(encoding(lm, mode), []).append(mode)
    stream = sampling.key(seed)
    out: dict[str, list[Prediction | None]] = {m: [None] * len(records) * samples for m in modes}
    for index in batches:
        rows = torch.tensor(
            [i * samples + s for i in index for s in range(samples)], device=lm.device
        )
        for (system, thinking, blind), members in variants.items():
            t0 = time.perf_counter()
            texts = [
                format_prompt(lm.tokenizer, records[i], prompt, system, thinking) for i in index
            ]
            ids, mask = lm.tokenize_prompts(texts)
            prefix = lm.encode(ids, mask, torch.full_like(ids[:, 0], blind, dtype=torch.bool))
            prompt_lengths = prefix.mask.sum(1).repeat_interleave(samples).tolist()
            if samples > 1:
                prefix = prefix.fork(samples)
            encoded = time.perf_counter() - t0
            spread = latents = None
            reasoned = 0.0  # the latents' time, which each mode reading them pays as if alone
            if any(parse_mode(m)[0] in LATENT_MODES for m in members):
                # Called whatever the batch size: under FSDP the reasoner's forward is a
                # collective, which every rank must enter as often as the others.
                t_r = time.perf_counter()
                latents = lm.reason(prefix)
                reasoned = time.perf_counter() - t_r
                spread = latent_spread(latents) if len(index) > 1 else None
            for mode in members:
                t1 = time.perf_counter()
                base_mode, budget = parse_mode(mode)
                setup = encoded + (reasoned if base_mode in LATENT_MODES else 0.0)
                mode_settings = settings if budget is None else replace(settings, budget=budget)
                noise = RowNoise(stream, rows)
                answers = decode(
                    lm, prefix, base_mode, mode_settings, noise, all_done, samples, latents
                )
                batch_time = setup + time.perf_counter() - t1
                preds = [
                    Prediction(
                        id=records[i].id,
                        mode=mode,
                        text=a.text,
                        extracted=extract(task, a.answer),
                        correct=grade(task, a.answer, records[i]),
                        tokens=a.tokens,
                        positions=int(n_prompt) + a.after_prompt,
                        after_prompt=a.after_prompt,
                        batch_time_s=batch_time,
                        time_per_question_s=batch_time / len(index),
                        ttft_s=setup + a.first_token_at - t1,
                        truncated=a.truncated,
                        confidence=a.confidence,
                        sample=s,
                        route=a.route,
                        probe_tokens=a.probe_tokens,
                        steps=len(records[i].steps) if records[i].steps else None,
                        latent_spread=spread if base_mode in LATENT_MODES else None,
                    )
                    for (i, s), a, n_prompt in zip(
                        [(i, s) for i in index for s in range(samples)],
                        answers,
                        prompt_lengths,
                        strict=True,
                    )
                ]
                for p, row in zip(preds, rows.tolist(), strict=True):
                    out[mode][row] = p
                if on_batch is not None:
                    on_batch(preds)
    return out


def predict(
    lm: LatentLM,
    task: str,
    records: Sequence[Record],
    prompt: PromptConfig,
    mode: str,
    settings: DecodeConfig,
    batch_size: int = 16,
    seed: int = 0,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    samples: int = 1,
    all_done: Callable[[bool], bool] | None = None,
) -> list[Prediction]:
    """`predict_modes` for one mode: the records in their order, each answered `samples`
    times."""
    return predict_modes(
        lm, task, records, prompt, [mode], settings, batch_size, seed, on_batch, samples, all_done
    )[mode]


def mode_rows(
    lm: LatentLM,
    task: str,
    records: Sequence[Record],
    prompt: PromptConfig,
    modes: Sequence[str],
    settings: DecodeConfig,
    batch_size: int,
    seed: int,
    all_done: Callable[[bool], bool] | None = None,
    keep: list[Prediction] | None = None,
) -> list[dict[str, Any]]:
    """Each mode on the same records, as the held-out table a training stage prints when it
    ends: accuracy with its 95% interval, the paired difference against the best no-thinking
    baseline, tokens, positions and time per question (`summarize` plus comparisons).

    Under data parallelism the batches are those of one process, dealt to the ranks in turn
    (each rank runs as many, repeating its last one where it is short, so that `all_done`
    keeps their decoding in step), and the predictions are gathered: every rank returns the
    table of the whole set, the same as one process prints, `lrt-swap` and spreads included.
    """
    rank, size = world()
    plan = length_batches(lm, records, prompt, modes, batch_size)
    mine = plan[rank::size]
    turns = -(-len(plan) // size)
    if plan:
        mine += [mine[-1] if mine else plan[-1]] * (turns - len(mine))
    answered = answer_batches(
        lm, task, records, prompt, modes, settings, mine, seed, None, 1, all_done
    )
    rows, by_mode = [], []
    for mode in modes:
        parts = gather_objects(answered[mode])
        preds = [next(p for p in slot if p is not None) for slot in zip(*parts, strict=True)]
        rows.append({"task": task, "mode": mode, **summarize(preds)})
        by_mode.append(preds)
        if keep is not None:  # every answer, for pairing runs question by question later
            keep.extend(preds)
    compare_to_best_baseline(rows, by_mode, seed)
    compare_to_swap(rows, by_mode, seed)
    return rows
