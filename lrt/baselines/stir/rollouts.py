"""Stage I's rollouts: K sampled chains of thought per training question, graded and rewarded,
and the segments they split into.

Rollouts decode exactly as `cot@T_max` does (same prompt, same budget forcing), only sampled:
the states mined from them are then states the `stir` mode meets online. A rollout's noise is
a function of (seed, question, rollout) alone, so mining does not depend on batching and a
resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.evaluation.predict import prompt_variant
from lrt.grading import grade
from lrt.lm import sampling
from lrt.lm.latent_lm import LatentLM
from lrt.lm.sampling import RowNoise

MODE = "stir"
"""The mode whose prompt mining reads: the states must be those `stir` meets online."""


def ends_segment(
    tokenizer: PreTrainedTokenizerBase, segment: Sequence[int], delimiter: str
) -> bool:
    """Whether the tokens of a segment so far complete it: their text holds the delimiter.

    The one rule mining and decoding share, so a mined state sits at the same token (the one
    that completes the delimiter, not the next) as the query it is retrieved by.
    """
    return delimiter in tokenizer.decode(list(segment), skip_special_tokens=True)


def segment_ends(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], delimiter: str
) -> list[int]:
    """Token counts at which successive segments of `ids` end (`ids[:end]` ends with the
    delimiter); text after the last delimiter is no segment."""
    ends, start = [], 0
    for j in range(len(ids)):
        if ends_segment(tokenizer, ids[start : j + 1], delimiter):
            ends.append(j + 1)
            start = j + 1
    return ends


@dataclass
class Rollout:
    """One completion of a question: its ids after the thinking marker, graded and rewarded."""

    ids: list[int]
    correct: bool
    reward: float
    ends: list[int]
    """Where its segments end (token counts), among the tokens a segment may end on."""
    tokens: int
    """Tokens the model generated (the reward's length term)."""


def reward(correct: bool, tokens: int, eta: float, t_max: int) -> float:
    """STIR's r = 1[correct] - eta x tokens / T_max."""
    return float(correct) - eta * tokens / max(1, t_max)


def contexts(lm: LatentLM, records: Sequence[Record], prompt: PromptConfig) -> list[list[int]]:
    """The ids before each question's completion: its `stir` prompt and the thinking marker."""
    system, thinking = prompt_variant(lm, MODE)
    texts = [format_prompt(lm.tokenizer, r, prompt, system, thinking) for r in records]
    out = []
    for ids in lm.tokenizer(texts, add_special_tokens=False).input_ids:
        n = lm.open_ids.numel()
        opened = len(ids) >= n and ids[-n:] == lm.open_ids.tolist()
        out.append(list(ids) if opened else [*ids, *lm.open_ids.tolist()])
    return out


def sample_rollouts(
    lm: LatentLM,
    task: str,
    records: Sequence[Record],
    indices: Sequence[int],
    prompt: PromptConfig,
    k: int,
    temperature: float,
    top_p: float,
    t_max: int,
    eta: float,
    max_answer_tokens: int,
    delimiter: str,
    seed: int,
) -> list[list[Rollout]]:
    """K rollouts of each record, decoded together; `indices` are the records' positions in the
    mined list (the noise key of their rollouts)."""
    system, thinking = prompt_variant(lm, MODE)
    texts = [format_prompt(lm.tokenizer, r, prompt, system, thinking) for r in records]
    prefix = lm.encode(*lm.tokenize_prompts(texts)).fork(k)
    rows = torch.tensor([q * k + j for q in indices for j in range(k)], device=lm.device)
    gen = lm.generate(
        prefix,
        "cot",
        max_answer_tokens=max_answer_tokens,
        budget=t_max,
        temperature=temperature,
        top_p=top_p,
        noise=RowNoise(sampling.key(seed), rows),
    )
    eos = set(lm.eos_ids)
    out: list[list[Rollout]] = []
    for q, record in enumerate(records):
        group = []
        for j in range(q * k, (q + 1) * k):
            ids, made = gen.token_ids[j], gen.num_generated[j]
            forced = len(ids) - made - int(bool(ids) and ids[-1] in eos) > 0
            # Segments end only on tokens decoding goes on from unforced: not the token that
            # hit the budget (forcing follows it), nor the last one (EOS or the answer limit),
            # nor anything after a forced close (a row that ended inside its thinking is forced
            # where it ended: its thinking is the tokens before its answer).
            usable = min(gen.answer_start[j], t_max - 1) if forced else len(ids) - 1
            correct = grade(task, gen.answer_texts[j], record)  # not the thinking
            group.append(
                Rollout(
                    ids=ids,
                    correct=correct,
                    reward=reward(correct, made, eta, t_max),
                    ends=segment_ends(lm.tokenizer, ids[:usable], delimiter),
                    tokens=made,
                )
            )
        out.append(group)
    return out


def gold_rollout(
    lm: LatentLM, task: str, record: Record, eta: float, t_max: int, delimiter: str
) -> Rollout | None:
    """The record's solution text as a rollout (STIR's `rollout_or_gold` positive), if any."""
    if not record.solution:
        return None
    ids = lm.tokenizer(record.solution, add_special_tokens=False).input_ids
    correct = grade(task, record.solution, record)
    ends = segment_ends(lm.tokenizer, ids, delimiter)
    return Rollout(ids, correct, reward(correct, len(ids), eta, t_max), ends, len(ids))
