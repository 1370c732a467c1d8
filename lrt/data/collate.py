"""Padding conventions shared by training batches and generation.

Prompts are left-padded so every row's prompt ends at the same column and the thinking span
and answer start together; answers are right-padded and end with EOS, so the model learns to
stop.
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
    tokenizer: PreTrainedTokenizerBase, answers: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded answer ids with EOS appended, and their mask."""
    rows = [
        tokenizer(a, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for a in answers
    ]
    return pad_token_rows(rows, tokenizer.pad_token_id)


def pad_token_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists (at least one column, so an empty row still has a shape)."""
    width = max(1, *(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
