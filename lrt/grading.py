r"""Answer extraction and checking per task, shared by SFT targets, GRPO rewards and evaluation.

Three grading kinds (`TaskSpec.grader`): `numeric` (GSM8K, arith) compares numbers,
`math` (MATH) checks equivalence with math-verify, `choice` (LSAT) compares option letters.
Extraction prefers the model's explicit final answer (`\boxed{}`, "The answer is") and falls back
to the LAST number, because small models restate the question's numbers first.
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache

from lrt.data.parsers import last_boxed
from lrt.data.records import Record
from lrt.data.tasks import TASKS
from lrt.errors import ConfigError

_MATH_TIMEOUT_S = 5

# A number: thousands groups ("1,000") or plain digits, optional decimals, optional sign; a minus
# right after a digit or letter is a hyphen ("3-4", "x-2"), not a sign.
_NUMBER = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?![\d])"
    r"|(?<![\w.])-?\.\d+"
)
_FRACTION = re.compile(r"^(-?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$")
_ANSWER_PHRASE = re.compile(r"(?i:answer\s*(?:is\s*:?|:))|####")

_CHOICE_STATEMENT = re.compile(
    r"(?i:answer)\s*(?:(?i:is)\s*:?|:)[\s*_\"'`]*(?:(?i:option|choice)\s*)?\(?([A-E])(?![A-Za-z])"
)
_CHOICE_BOXED = re.compile(r"^\s*(?:\\text\{\s*)?\(?([A-E])\)?\s*\}?\s*$")
_CHOICE_PAREN = re.compile(r"(?<![A-Za-z0-9])\(?([A-E])\)")
_CHOICE_LONE = re.compile(r"^\s*\(?([A-E])(?:[).:]|\s*$)")


def _kind(task: str) -> str:
    """The grading kind of a task name, or a ConfigError naming the known tasks."""
    if task not in TASKS:
        raise ConfigError(f"Unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[task].grader


def _clean_numeric(text: str) -> str:
    """Drop what breaks number matching: currency, LaTeX spacing, unicode minus."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace("\\!", "")
    text = re.sub(r"\\?\$", "", text)
    return re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", text)


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return match.group().replace(",", "") if match else None


def _extract_number(text: str) -> str | None:
    """Boxed answer, else the first number after the last answer phrase, else the last number."""
    text = _clean_numeric(text)
    boxed = last_boxed(text)
    if boxed is not None:
        content = boxed.replace(" ", "").replace(",", "")
        if _FRACTION.match(content):
            return content
        number = _first_number(boxed)
        if number is not None:
            return number
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        number = _first_number(text[phrases[-1].end() :])
        if number is not None:
            return number
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _to_float(number: str) -> float | None:
    fraction = _FRACTION.match(number)
    try:
        if fraction:
            return float(fraction.group(1)) / float(fraction.group(2))
        return float(number)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers_equal(prediction: str, gold: str) -> bool:
    a, b = _to_float(prediction), _to_float(gold.replace(",", "").strip())
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def _math_parse(text: str) -> list:
    """math-verify parse; its signal-based timeout only works in the main thread, so elsewhere
    (dataloader threads, async evaluation) it runs without one."""
    from math_verify import parse

    in_main = threading.current_thread() is threading.main_thread()
    return parse(text, parsing_timeout=_MATH_TIMEOUT_S if in_main else None)


def _math_prediction(text: str) -> list:
    boxed = last_boxed(text)
    return _math_parse(f"\\boxed{{{boxed}}}" if boxed else text)


@lru_cache(maxsize=4096)
def _math_gold(answer: str) -> tuple:
    """Parsed once per answer: GRPO grades many samples against the same gold."""
    return tuple(_math_parse(f"${answer}$") or _math_parse(f"\\boxed{{{answer}}}"))


def _math_equal(gold: tuple, prediction: list) -> bool:
    from math_verify import verify

    in_main = threading.current_thread() is threading.main_thread()
    timeout = _MATH_TIMEOUT_S if in_main else None
    return bool(gold and prediction and verify(list(gold), prediction, timeout_seconds=timeout))


def _extract_choice(text: str) -> str | None:
    """Last explicit answer statement or boxed letter, else last "(C)"/"C)", else a lone "C"."""
    explicit = [(m.start(), m.group(1)) for m in _CHOICE_STATEMENT.finditer(text)]
    boxed = last_boxed(text)
    if boxed is not None and (letter := _CHOICE_BOXED.match(boxed)):
        explicit.append((text.rfind("\\boxed"), letter.group(1)))
    if explicit:
        return max(explicit)[1]
    parens = _CHOICE_PAREN.findall(text)
    if parens:
        return parens[-1]
    lone = _CHOICE_LONE.match(text)
    return lone.group(1) if lone else None


def extract(task: str, text: str) -> str | None:
    """The final answer a model wrote, as a string, or None when it wrote none."""
    kind = _kind(task)
    if kind == "numeric":
        return _extract_number(text)
    if kind == "choice":
        return _extract_choice(text)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    parsed = _math_parse(text)
    return str(parsed[-1]) if parsed else None


def grade(task: str, prediction_text: str, record: Record) -> bool:
    """Whether the model's text gives the record's gold answer."""
    kind = _kind(task)
    if kind == "math":
        return _math_equal(_math_gold(record.answer), _math_prediction(prediction_text))
    predicted = extract(task, prediction_text)
    if predicted is None:
        return False
    if kind == "numeric":
        return _numbers_equal(predicted, record.answer)
    return predicted == record.answer.strip().upper()
