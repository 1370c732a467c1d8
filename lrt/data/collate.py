"""Padding conventions shared by training batches and generation.

Prompts are left-padded so every row's prompt ends at the same column and the thinking span
and answer start together; answers are right-padded and end with EOS, so the model learns to
stop (unless `data.max_target_tokens` cut the answer: then it has no EOS, since it did not end
there).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


def pad_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask; no special tokens added (the chat template has any BOS)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def pad_answers(
    tokenizer: PreTrainedTokenizerBase, answers: list[str], max_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded answer ids with EOS appended, and their mask; `max_tokens` (EOS included)
    cuts a longer answer to its first `max_tokens` ids, without EOS (`answer_fits`)."""
    eos = tokenizer.eos_token_id
    rows = [
        ids + [eos] if answer_fits(len(ids), max_tokens) else ids[:max_tokens]
        for ids in tokenizer(answers, add_special_tokens=False).input_ids
    ]
    return pad_token_rows(rows, tokenizer.pad_token_id)


def answer_fits(length: int, max_tokens: int | None) -> bool:
    """Whether an answer of `length` ids and its EOS fit in `max_tokens` (None: no limit). One
    that does not is cut and loses its EOS: the model should learn to stop only where an answer
    really ends, not where a cap cut it."""
    return max_tokens is None or length < max_tokens


def pad_token_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists (at least one column, so an empty row still has a shape)."""
    width = max(1, *(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
