"""The record type every task loader returns, so prompts, training and grading share one schema."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One question with its gold final answer.

    `question` is the full text shown to the model (for LSAT: passage, blank line, question);
    multiple-choice options live in `choices` as plain texts without their "(A)" prefix, so the
    prompt layer decides how to letter them. `answer` is the gold final answer as a string
    (a number, a LaTeX expression, or a letter A-E); `solution` is a worked solution and
    `response` a complete answer text, where the dataset has them. `steps` are the solution's
    explicit reasoning steps, one string each, where the task states them (`arith` solutions,
    GSM8K's `<<...>>` calculator annotations, GSM8K-Aug's `cot`): what RiM grounds its memory
    blocks in.
    """

    id: str
    question: str
    answer: str
    solution: str | None = None
    choices: tuple[str, ...] | None = None
    response: str | None = None
    """A dataset's own final response, used verbatim as the SFT target with
    `data.prompt.target=response` (OpenR1-Math: the text after the reasoning trace of a
    generation verified correct)."""
    steps: tuple[str, ...] | None = None
