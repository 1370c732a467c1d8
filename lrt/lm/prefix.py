"""The encoded prompt that every pass after it extends: its KV cache, padding mask, the
reasoner's input states and the next-token logits, with forks that share its keys and values.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache


@dataclass
class Prefix:
    """The encoded prompt: KV cache, padding mask and the reasoner's input states."""

    cache: DynamicCache
    mask: torch.Tensor
    prompt_states: torch.Tensor
    """The reasoner's input states, one row per prompt (see `hidden`)."""
    prompt_logits: torch.Tensor
    """Next-token logits after each prompt (see `last_logits`)."""
    opened: bool = False
    """Whether the chat template already opened the thinking span (DeepSeek-R1-Distill's
    generation prompt ends with `<think>\n`): then no mode adds the marker a second time."""
    reason_mask: torch.Tensor | None = None
    """The positions of `hidden` the reasoner reads (`reasoner.attend`): the question's own
    tokens, or the whole prompt (`mask`) when None."""
    question_embeds: torch.Tensor | None = None
    """`reasoner.token_residual` only: the input embeddings of each prompt's first K question
    tokens, [B, K, d], zero past the question's end (one row per prompt, like
    `prompt_states`)."""
    repeats: int = 1
    """Rows of the cache per row of `prompt_states` and `prompt_logits`: a fork repeats those
    two only when they are read (GRPO's G-fold forks never read them)."""

    @property
    def hidden(self) -> torch.Tensor:
        """The reasoner's input states, one row per cache row."""
        return self._per_row(self.prompt_states)

    @property
    def last_logits(self) -> torch.Tensor:
        """Next-token logits after the prompt: where decoding starts when the prompt itself
        already ends with the thinking span's opening marker (`opened`)."""
        return self._per_row(self.prompt_logits)

    @property
    def question_tokens(self) -> torch.Tensor | None:
        """`question_embeds`, one row per cache row."""
        q = self.question_embeds
        return None if q is None else self._per_row(q)

    def _per_row(self, t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(self.repeats, dim=0) if self.repeats > 1 else t

    @property
    def reasoner_mask(self) -> torch.Tensor:
        return self.mask if self.reason_mask is None else self.reason_mask

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def fork(self, repeats: int = 1) -> Prefix:
        """A prefix whose cache can be extended freely; each row repeated `repeats` times.

        Decoding appends to a KV cache, so every pass over the suffix gets its own cache
        instead of re-encoding the prompt. The fork shares the prompt's keys and values
        (`shared_cache`): copying them per fork cost a whole prompt cache per decode and per
        GRPO pass, gigabytes at paper scale. Repeated rows are allocated once, by the repeat.
        """
        cache = shared_cache(self.cache)
        if repeats == 1:
            return replace(self, cache=cache)
        cache.batch_repeat_interleave(repeats)
        reason = self.reason_mask
        return replace(
            self,
            cache=cache,
            mask=self.mask.repeat_interleave(repeats, dim=0),
            reason_mask=None if reason is None else reason.repeat_interleave(repeats, dim=0),
            repeats=self.repeats * repeats,
        )

    def rows(self, index: torch.Tensor) -> Prefix:
        """The prefix of the rows in `index` (in that order), this one left whole: only the
        rows taken are copied."""
        cache = shared_cache(self.cache)
        cache.batch_select_indices(index)
        return self.rows_of(cache, lambda t: t[index])

    def select(self, rows: torch.Tensor) -> Prefix:
        """The prefix of `rows` only. The cache is narrowed in place (no copy of the keys and
        values of the rows dropped), so this prefix is spent: use the returned one."""
        self.cache.batch_select_indices(rows)
        return self.rows_of(self.cache, lambda t: t[rows])

    def rows_of(self, cache: DynamicCache, pick: Callable[[torch.Tensor], torch.Tensor]) -> Prefix:
        """This prefix over `cache`, every per-row tensor passed through `pick`."""
        reason = None if self.reason_mask is None else pick(self.reason_mask)
        tokens = self.question_tokens
        return Prefix(
            cache,
            pick(self.mask),
            pick(self.hidden),
            pick(self.last_logits),
            self.opened,
            reason,
            None if tokens is None else pick(tokens),
        )


def shared_cache(cache: DynamicCache) -> DynamicCache:
    """A cache over the same key/value tensors with its own layer objects.

    transformers' dynamic layers never write into their tensors: they append by concatenation
    and select or repeat rows by indexing, each of which binds the layer to a new tensor. A
    copy of the layer objects is therefore as independent as a deep copy, at no cost, for
    every user that only appends (a writer in place, like STIR's steered re-feed, writes only
    positions it appended itself).
    """
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    return out
