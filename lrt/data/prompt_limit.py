"""How long a chat-templated prompt may be, and what happens to a longer one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.data.settings import DataConfig
from lrt.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class PromptLimit:
    """How long a chat-templated prompt may be (`data.max_prompt_tokens`, capped by what fits in
    the model's context) and what to do with a longer one (`data.on_long_prompt`)."""

    max_tokens: int | None = None
    on_long: str = "error"
    why: str = "data.max_prompt_tokens"
    """Where the limit comes from, for messages."""

    @classmethod
    def from_config(cls, data: DataConfig, budget: int | None) -> PromptLimit:
        """`budget`: prompt tokens the model's context leaves room for (None: no limit known)."""
        on_long, wanted = data.on_long_prompt, data.max_prompt_tokens
        if wanted is not None and budget is not None and wanted > budget:
            raise ConfigError(
                f"data.max_prompt_tokens={wanted} does not fit in the model's context, which "
                f"leaves {budget} tokens for the prompt"
            )
        if wanted is not None:
            return cls(wanted, on_long, f"data.max_prompt_tokens={wanted}")
        return cls(budget, on_long, "what the model's context leaves after latents and answer")

    def apply(
        self,
        records: Sequence[Record],
        tokenizer: PreTrainedTokenizerBase,
        prompt: PromptConfig,
        system: str | None,
        where: str,
    ) -> list[Record]:
        """The records, each prompt within the limit: an error naming the first one that is not,
        or (truncate) its question cut from the start, which keeps the ask at its end."""
        if self.max_tokens is None:
            return list(records)
        texts = [format_prompt(tokenizer, r, prompt, system) for r in records]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
        out: list[Record] = []
        cut = 0
        for record, n in zip(records, lengths, strict=True):
            if n <= self.max_tokens:
                out.append(record)
                continue
            if self.on_long == "error":
                raise DataError(
                    f"{where}: record {record.id!r} has a {n}-token prompt, over the limit of "
                    f"{self.max_tokens} ({self.why}); data.on_long_prompt=truncate cuts such "
                    "questions"
                )
            out.append(self._truncate(record, n, tokenizer, prompt, system, where))
            cut += 1
        if cut:
            log.warning(
                "%s: %d of %d prompts were longer than %d tokens; their questions were cut "
                "(data.on_long_prompt=truncate)",
                where,
                cut,
                len(records),
                self.max_tokens,
            )
        return out

    def _truncate(
        self,
        record: Record,
        n: int,
        tokenizer: PreTrainedTokenizerBase,
        prompt: PromptConfig,
        system: str | None,
        where: str,
    ) -> Record:
        assert self.max_tokens is not None
        ids = tokenizer(record.question, add_special_tokens=False).input_ids
        keep = len(ids)
        # Re-tokenising the cut text can merge tokens differently: cut again until it fits.
        while n > self.max_tokens:
            keep -= n - self.max_tokens
            if keep <= 0:
                raise DataError(
                    f"{where}: record {record.id!r} does not fit in {self.max_tokens} prompt "
                    f"tokens ({self.why}) even with its question cut entirely"
                )
            record = replace(record, question=tokenizer.decode(ids[len(ids) - keep :]))
            n = _prompt_tokens(tokenizer, record, prompt, system)
        return record


def _prompt_tokens(
    tokenizer: PreTrainedTokenizerBase, record: Record, prompt: PromptConfig, system: str | None
) -> int:
    text = format_prompt(tokenizer, record, prompt, system)
    return len(tokenizer(text, add_special_tokens=False).input_ids)
