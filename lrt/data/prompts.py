"""Turning records into the text the base model reads and the answer text it is trained on.

Every inference mode (`lrt`, `nothink`, `cot`, `hybrid`) uses the same question prompt, so a
comparison between modes measures the thinking span alone, not a prompt difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from lrt.data.parsers import LETTERS
from lrt.data.records import Record
from lrt.errors import ConfigError, DataError
from lrt.schema import typed

TARGETS = ("answer", "solution", "response", "question")


@dataclass
class PromptConfig:
    """How a question is shown and how its gold answer is written (the `data.prompt` group)."""

    user_template: str = "{question}"
    answer_template: str = "The answer is {answer}."
    target: str = "answer"
    """SFT target: the formatted final answer (`answer`), the dataset's solution text before it
    (`solution`), the dataset's own final response verbatim (`response`, OpenR1-Math), or the
    question's own text (`question`: `stage=reconstruct`, autoencoding through the latents)."""

    @classmethod
    def from_cfg(cls, node: object) -> PromptConfig:
        return typed(cls, node, "data.prompt")

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"data.prompt.target={self.target!r} is not one of {TARGETS}")
        if "{question}" not in self.user_template:
            raise ConfigError("data.prompt.user_template must contain '{question}'")
        if "{answer}" not in self.answer_template:
            raise ConfigError("data.prompt.answer_template must contain '{answer}'")


def question_text(record: Record, cfg: PromptConfig) -> str:
    """The user turn: the question, followed by lettered options for multiple choice."""
    body = record.question
    if record.choices:
        options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(record.choices))
        body = f"{body}\n\n{options}"
    return cfg.user_template.format(question=body)


def format_prompt(
    tokenizer: PreTrainedTokenizerBase,
    record: Record,
    cfg: PromptConfig,
    system: str | None,
    thinking: bool = True,
) -> str:
    """Chat-templated prompt ending with the assistant turn's opening (no thinking marker yet).

    `thinking=False` asks the template for its non-thinking mode (Qwen3's `enable_thinking`,
    which closes an empty span itself); templates without one ignore it.
    """
    return chat_prompt(tokenizer, question_text(record, cfg), system, thinking)


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, user: str, system: str | None, thinking: bool = True
) -> str:
    """The chat template around one user turn (and the system line), opening the reply."""
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    extra = {} if thinking else {"enable_thinking": False}
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **extra
    )


def template_frame(
    tokenizer: PreTrainedTokenizerBase, system: str | None
) -> tuple[list[int], list[int]]:
    """Token ids the chat template puts before and after the user's text: the system line and
    role markers (head), the end of the turn and the reply's opening (tail).

    Read off the template itself, for any model: the common prefix and suffix of two prompts
    that differ only in their user text.
    """
    a, b = (
        tokenizer(chat_prompt(tokenizer, text, system), add_special_tokens=False).input_ids
        for text in ("alpha question", "zulu problem")
    )
    head = common_prefix(a, b)
    tail = common_prefix(a[head:][::-1], b[head:][::-1])
    return a[:head], a[len(a) - tail :]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items `a` and `b` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def target_text(record: Record, cfg: PromptConfig) -> str | None:
    """The answer text the model is trained to produce after the thinking span, or None when
    the record lacks the field `cfg.target` needs."""
    final = cfg.answer_template.format(answer=record.answer)
    if cfg.target == "solution":
        return f"{record.solution.strip()} {final}" if record.solution else None
    if cfg.target == "response":
        return record.response.strip() if record.response else None
    if cfg.target == "question":
        return record.question
    return final


def format_target(record: Record, cfg: PromptConfig) -> str:
    """`target_text`, with an error naming the record when it lacks the needed field."""
    text = target_text(record, cfg)
    if text is None:
        raise DataError(
            f"data.prompt.target={cfg.target!r} but record {record.id!r} has no {cfg.target} "
            "text (data.on_error=skip drops such records)"
        )
    return text


def question_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, head: list[int], tail: list[int]
) -> torch.Tensor:
    """1 on each left-padded prompt's own user text, 0 on padding and on the template's `head`
    and `tail` (`template_frame`). Each row drops the longest run of its first tokens that
    matches the head and of its last that matches the tail, so a prompt asked another way
    (another system line) loses only what it shares; an empty user text keeps the prompt."""
    out = torch.zeros_like(attention_mask)
    for i, valid in enumerate(attention_mask.tolist()):
        start = valid.index(1) if 1 in valid else len(valid)
        row = input_ids[i, start:].tolist()
        h = common_prefix(row, head)
        t = common_prefix(row[h:][::-1], tail[::-1])
        if len(row) - h > t:
            out[i, start + h : len(valid) - t] = 1
        else:
            out[i] = attention_mask[i]
    return out
