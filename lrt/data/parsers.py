"""One parser per dataset: an upstream row (hub or local file, same fields) to a `Record`.

A parser raises `RowError` naming the field; the loader adds the file and line it came from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lrt.data.records import Record

LETTERS = "ABCDE"


class RowError(ValueError):
    """A row that cannot become a Record; the loader adds where the row came from."""

    def __init__(self, field_name: str | None, problem: str) -> None:
        super().__init__(f"field {field_name!r} {problem}" if field_name else f"row {problem}")


def _text(row: Mapping[str, Any], name: str) -> str:
    """A required non-empty string field."""
    if name not in row:
        raise RowError(name, "is missing")
    value = row[name]
    if not isinstance(value, str):
        raise RowError(name, f"is not a string (got {type(value).__name__})")
    if not value.strip():
        raise RowError(name, "is empty")
    return value


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`), braces balanced, else None.

    Escaped braces (`\{`, `\}`) count as text, so `\boxed{\{1, 2\}}` and `\left\{` work. The
    brace-less form `\boxed 2` (a few MATH solutions use it) runs to the next `$`.
    """
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)(?:\s*(\{)|\s+)", text))):
        if not m.group(1):
            content = text[m.end() :].split("$", 1)[0].strip()
            if content:
                return content
            continue
        depth, i = 1, m.end()
        while i < len(text):
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end() : i].strip()
            i += 1
    return None


_GSM8K_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_EQUATION = re.compile(r"[^=<>]+=[^=<>]+")


def calculator_steps(text: str, field_name: str) -> tuple[str, ...]:
    """The `<<expression=result>>` annotations of `text` (GSM8K's calculator calls, GSM8K-Aug's
    equation-only CoT), in order: one reasoning step each. A `<<` left open, a `>>` never
    opened or an annotation that is not one equation is refused, naming the annotation."""
    steps = []
    for match in _ANNOTATION.finditer(text):
        if not _EQUATION.fullmatch(match.group(1).strip()):
            raise RowError(field_name, f"has a malformed calculator annotation {match.group(0)!r}")
        steps.append(match.group(1).strip())
    rest = _ANNOTATION.sub("", text)
    for marker in ("<<", ">>"):
        if marker in rest:
            at = rest.index(marker)
            raise RowError(
                field_name,
                f"has an unbalanced {marker!r} near {rest[at : at + 20]!r}",
            )
    return tuple(steps)


def parse_gsm8k(row: Mapping[str, Any], default_id: str) -> Record:
    """GSM8K: the answer is the number after the last `#### `; calculator annotations dropped."""
    question = _text(row, "question")
    text = _text(row, "answer")
    if "####" not in text:
        raise RowError("answer", "has no '#### <number>' final answer")
    solution, final = text.rsplit("####", 1)
    answer = final.strip().replace(",", "")
    if not _GSM8K_NUMBER.fullmatch(answer):
        raise RowError("answer", f"has a non-numeric final answer {final.strip()!r}")
    steps = calculator_steps(solution, "answer")
    solution = _ANNOTATION.sub("", solution).strip()
    return Record(default_id, question.strip(), answer, solution or None, steps=steps)


def parse_gsm8k_aug(row: Mapping[str, Any], default_id: str) -> Record:
    """GSM8K-Aug (iCoT/Coconut): `question`, an equation-only `cot` (`<<16-3-4=9>> <<9*2=18>>`)
    whose equations are the steps, and the numeric `answer`."""
    question = _text(row, "question")
    cot = _text(row, "cot")
    answer = _text(row, "answer").strip().replace(",", "")
    if not _GSM8K_NUMBER.fullmatch(answer):
        raise RowError("answer", f"is not a number (got {answer!r})")
    return Record(
        default_id, question.strip(), answer, cot.strip(), steps=calculator_steps(cot, "cot")
    )


def parse_math(row: Mapping[str, Any], default_id: str) -> Record:
    r"""MATH: `answer` when the row has one (MATH500), else the last `\boxed{}` of `solution`."""
    problem = _text(row, "problem")
    solution = _text(row, "solution")
    if "answer" in row:
        answer = _text(row, "answer").strip()
    else:
        answer = last_boxed(solution)
        if answer is None:
            raise RowError("solution", "has no \\boxed{...} final answer")
        if not answer:
            raise RowError("solution", "has an empty \\boxed{} final answer")
    record_id = row.get("unique_id") if isinstance(row.get("unique_id"), str) else default_id
    return Record(record_id, problem.strip(), answer, solution.strip())


THINK_CLOSE = "</think>"


def _list(row: Mapping[str, Any], name: str) -> list[Any]:
    """A required list field (Parquet rows may hold numpy arrays: those count as lists)."""
    if name not in row:
        raise RowError(name, "is missing")
    value = row[name]
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if not isinstance(value, list):
        raise RowError(name, f"is not a list (got {type(value).__name__})")
    return value


def parse_openr1(row: Mapping[str, Any], default_id: str) -> Record:
    """OpenR1-Math-220k: `problem`, gold `answer`, and as `response` the text after the closing
    think tag of the first generation that math-verify marked correct (None when none was)."""
    problem = _text(row, "problem")
    answer = _text(row, "answer").strip()
    generations = _list(row, "generations")
    verified = _list(row, "correctness_math_verify")
    if len(generations) != len(verified):
        raise RowError(
            "correctness_math_verify",
            f"has {len(verified)} verdicts for {len(generations)} generations",
        )
    response = None
    for text, ok in zip(generations, verified, strict=True):
        if ok is True and isinstance(text, str) and THINK_CLOSE in text:
            response = text.rsplit(THINK_CLOSE, 1)[1].strip() or None
            if response:
                break
    record_id = row.get("uuid") if isinstance(row.get("uuid"), str) else default_id
    solution = row.get("solution") if isinstance(row.get("solution"), str) else None
    return Record(record_id, problem.strip(), answer, solution, response=response)


def parse_deepscaler(row: Mapping[str, Any], default_id: str) -> Record:
    """DeepScaleR-Preview: `problem`, `answer` (graded by math-verify), `solution`."""
    problem = _text(row, "problem")
    answer = _text(row, "answer").strip()
    solution = row.get("solution") if isinstance(row.get("solution"), str) else None
    return Record(default_id, problem.strip(), answer, solution)


def _number_text(value: float) -> str:
    """A float answer as its dataset means it: `27.0` -> `27`, `2.5` -> `2.5`."""
    return str(int(value)) if value.is_integer() else repr(value)


def parse_competition(row: Mapping[str, Any], default_id: str) -> Record:
    """AMC23 / AIME24 lists (Qwen2.5-Math layout): `problem` (or `question`) and `answer`,
    which AMC23 stores as a float (`27.0`): integral values are written as integers."""
    question = _text(row, "problem" if "problem" in row else "question")
    if "answer" not in row:
        raise RowError("answer", "is missing")
    value = row["answer"]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError("answer", f"is not a number or string (got {type(value).__name__})")
    if isinstance(value, float):
        value = _number_text(value)
    answer = str(value).strip()
    if not answer:
        raise RowError("answer", "is empty")
    record_id = str(row["id"]) if isinstance(row.get("id"), int | str) else default_id
    return Record(record_id, question.strip(), answer)


def parse_svamp(row: Mapping[str, Any], default_id: str) -> Record:
    """SVAMP (upstream SVAMP.json): the question is `Body + " " + Question`, as its authors pose
    it; `Answer` is a float (`51.0`), integral values written as integers. `Equation` is its
    one-line solution, kept as the record's solution."""
    body, question = _text(row, "Body").strip(), _text(row, "Question").strip()
    if "Answer" not in row:
        raise RowError("Answer", "is missing")
    value = row["Answer"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError("Answer", f"is not a number (got {type(value).__name__})")
    answer = _number_text(float(value))
    equation = row.get("Equation")
    record_id = row["ID"] if isinstance(row.get("ID"), str) else default_id
    solution = equation.strip() if isinstance(equation, str) and equation.strip() else None
    return Record(record_id, f"{body} {question}", answer, solution)


def _strip_letter(option: str) -> str:
    """`(A)text` -> `text`: options keep only their text; the prompt letters them."""
    return re.sub(r"^\s*\(?[A-E]\)\s*", "", option).strip()


def _options(row: Mapping[str, Any], name: str) -> tuple[str, ...]:
    if name not in row:
        raise RowError(name, "is missing")
    value = row[name]
    if not isinstance(value, list) or not 2 <= len(value) <= len(LETTERS):
        raise RowError(name, f"is not a list of 2 to {len(LETTERS)} options")
    if not all(isinstance(o, str) and o.strip() for o in value):
        raise RowError(name, "has an empty or non-string option")
    return tuple(_strip_letter(o) for o in value)


def _index(row: Mapping[str, Any], name: str, n: int) -> int:
    if name not in row:
        raise RowError(name, "is missing")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise RowError(name, f"is not an option index in 0..{n - 1} (got {value!r})")
    return value


def parse_lsat(row: Mapping[str, Any], default_id: str) -> Record:
    """LSAT in any of three layouts, told apart by their fields.

    AGIEval files (passage/question/options/label letter), AR-LSAT files
    (context/question/answers/label index) and the `hails/agieval-lsat-*` hub rows
    (query/choices/gold indices, question text already joined into `query`).
    """
    if "query" in row or "gold" in row:
        choices = _options(row, "choices")
        gold = row.get("gold")
        if not isinstance(gold, list) or len(gold) != 1:
            raise RowError("gold", f"is not a one-element list (got {gold!r})")
        letter = LETTERS[_index({"gold": gold[0]}, "gold", len(choices))]
        query = _text(row, "query").strip()
        query = query.removeprefix("Q:").strip()
        cut = query.rfind("Answer Choices:")
        question = query[:cut].strip() if cut > 0 else query
        return Record(default_id, question, letter, None, choices)
    if "context" in row or "answers" in row:
        passage_field, choices = "context", _options(row, "answers")
        letter = LETTERS[_index(row, "label", len(choices))]
    else:
        passage_field, choices = "passage", _options(row, "options")
        label = row.get("label")
        if not isinstance(label, str) or label.strip() not in tuple(LETTERS[: len(choices)]):
            raise RowError(
                "label", f"is not a letter A-{LETTERS[len(choices) - 1]} (got {label!r})"
            )
        letter = label.strip()
    question = _text(row, "question").strip()
    passage = row.get(passage_field)
    if passage is not None and not isinstance(passage, str):
        raise RowError(passage_field, f"is not a string (got {type(passage).__name__})")
    if passage and passage.strip():
        question = f"{passage.strip()}\n\n{question}"
    record_id = row.get("id_string") if isinstance(row.get("id_string"), str) else default_id
    return Record(record_id, question, letter, None, choices)
