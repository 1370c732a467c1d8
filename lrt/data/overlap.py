"""Validation must not share questions with test: compared by question text, not by file.

`DataConfig` refuses a validation split that reads the very file (or hub split) of the test
split, but a copy of the test file under another name, a benchmark folded into a training set
(MATH-500 inside MATH test), or a validation slice carved from such a set would pass that
check and let `reasoner/best` be chosen on test questions. Only the questions themselves tell.
"""

from __future__ import annotations

from collections.abc import Sequence

from lrt.data.records import Record


def normalised(question: str) -> str:
    """The question as compared: case-folded, whitespace runs collapsed to one space, so a
    copy re-wrapped or re-cased is still the same question."""
    return " ".join(question.casefold().split())


def shared_questions(records: Sequence[Record], others: Sequence[Record]) -> list[Record]:
    """The records of `records` whose normalised question is also one of `others`'."""
    seen = {normalised(r.question) for r in others}
    return [r for r in records if normalised(r.question) in seen]
