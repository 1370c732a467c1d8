"""Running a (base, reasoner) pair over records in one inference mode and grading the answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.grading import extract, grade
from lrt.latent_lm import LatentLM


@dataclass
class DecodeConfig:
    """Decoding settings shared by every mode."""

    max_answer_tokens: int = 32
    budget: int = 256
    force_answer: str = "The answer is"
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class Prediction:
    """One graded answer: a row of `predictions.jsonl`."""

    id: str
    mode: str
    text: str
    extracted: str | None
    correct: bool
    tokens: int
    latency_s: float
    truncated: bool
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


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
) -> list[Prediction]:
    """Decode and grade `records` in `mode`, batched; latency is the batch time per question."""
    system = lm.backbone.config.system_prompt
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    out: list[Prediction] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        t0 = time.perf_counter()
        prompts = [format_prompt(lm.tokenizer, r, prompt, system) for r in batch]
        prefix = lm.encode(*lm.tokenize_prompts(prompts))
        gen = lm.generate(
            prefix,
            mode,
            max_answer_tokens=decode.max_answer_tokens,
            budget=decode.budget,
            force_answer=decode.force_answer,
            temperature=decode.temperature,
            top_p=decode.top_p,
            generator=generator,
        )
        per_q = (time.perf_counter() - t0) / len(batch)
        rows = [
            Prediction(
                id=r.id,
                mode=mode,
                text=text,
                extracted=extract(task, text),
                correct=grade(task, text, r),
                tokens=n,
                latency_s=per_q,
                truncated=trunc,
                confidence=float(conf),
            )
            for r, text, n, trunc, conf in zip(
                batch, gen.texts, gen.num_generated, gen.truncated, gen.mean_logprob, strict=True
            )
        ]
        out.extend(rows)
        if on_batch is not None:
            on_batch(rows)
    return out


def accuracy(predictions: Sequence[Prediction]) -> float:
    return sum(p.correct for p in predictions) / max(len(predictions), 1)


def mean_tokens(predictions: Sequence[Prediction]) -> float:
    return sum(p.tokens for p in predictions) / max(len(predictions), 1)
