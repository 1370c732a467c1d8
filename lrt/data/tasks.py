"""Task registry: where each task's rows come from and how a row becomes a `Record`.

Hub rows (`datasets.load_dataset`) and local JSONL rows go through the same `parse_row`, so a
local copy of the data behaves exactly like the hub. Local files are read line by line here, so
a malformed row is reported by file and line number.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrt.data.arith import SPLITS as ARITH_SPLITS
from lrt.data.arith import load_arith
from lrt.data.records import Record
from lrt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LETTERS = "ABCDE"


class RowError(ValueError):
    """A row that cannot become a Record; the loader adds where the row came from."""

    def __init__(self, field_name: str | None, problem: str) -> None:
        super().__init__(f"field {field_name!r} {problem}" if field_name else f"row {problem}")


@dataclass(frozen=True)
class HubSource:
    """One `datasets.load_dataset(path, config, split=split)` call."""

    path: str
    config: str | None
    split: str


@dataclass(frozen=True)
class TaskSpec:
    """What other code needs to know about a task.

    `grader` is the grading kind (`numeric`, `math` or `choice`, see `lrt.grading`). A dataset
    task has `parse_row`, `hub` (split -> hub source) and `local` (split -> file under the shared
    data folder, so `load_task(..., path=<data folder>)` finds it); a generated task has
    `generate(split, limit, **options)` and the `options` it accepts.
    """

    name: str
    grader: str
    splits: tuple[str, ...]
    parse_row: Callable[[Mapping[str, Any], str], Record] | None = None
    hub: Mapping[str, HubSource] = field(default_factory=dict)
    local: Mapping[str, str] = field(default_factory=dict)
    generate: Callable[..., list[Record]] | None = None
    options: tuple[str, ...] = ()


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
    solution = re.sub(r"<<[^>]*>>", "", solution).strip()
    return Record(default_id, question.strip(), answer, solution or None)


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
        value = str(int(value)) if value.is_integer() else repr(value)
    answer = str(value).strip()
    if not answer:
        raise RowError("answer", "is empty")
    record_id = str(row["id"]) if isinstance(row.get("id"), int | str) else default_id
    return Record(record_id, question.strip(), answer)


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


def _lsat(name: str, subset: str, local: dict[str, str]) -> TaskSpec:
    return TaskSpec(
        name=name,
        grader="choice",
        splits=tuple(s for s in ("train", "validation", "test") if s in local),
        parse_row=parse_lsat,
        hub={"test": HubSource(f"hails/agieval-lsat-{subset}", None, "test")},
        local=local,
    )


TASKS: dict[str, TaskSpec] = {
    "gsm8k": TaskSpec(
        name="gsm8k",
        grader="numeric",
        splits=("train", "test"),
        parse_row=parse_gsm8k,
        hub={s: HubSource("openai/gsm8k", "main", s) for s in ("train", "test")},
        local={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    ),
    "math": TaskSpec(
        name="math",
        grader="math",
        splits=("train", "test"),
        parse_row=parse_math,
        hub={
            "train": HubSource("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
            "test": HubSource("HuggingFaceH4/MATH-500", None, "test"),
        },
        local={"train": "math/train.jsonl", "test": "math500/test.jsonl"},
    ),
    # `lsat` is LSAT-AR, the paper's LSAT benchmark; AR-LSAT files give its train/validation.
    "lsat": _lsat(
        "lsat",
        "ar",
        {
            "train": "ar_lsat/train_ar.jsonl",
            "validation": "ar_lsat/val_ar.jsonl",
            "test": "lsat/lsat-ar.jsonl",
        },
    ),
    "lsat_lr": _lsat(
        "lsat_lr", "lr", {"validation": "ar_lsat/val_lr.jsonl", "test": "lsat/lsat-lr.jsonl"}
    ),
    "lsat_rc": _lsat(
        "lsat_rc", "rc", {"validation": "ar_lsat/val_rc.jsonl", "test": "lsat/lsat-rc.jsonl"}
    ),
    # The paper's SFT data: train only (validate on MATH-500 with `data.val.task=math`).
    "openr1_math": TaskSpec(
        name="openr1_math",
        grader="math",
        splits=("train",),
        parse_row=parse_openr1,
        hub={"train": HubSource("open-r1/OpenR1-Math-220k", "default", "train")},
    ),
    # The paper's RL data: train only.
    "deepscaler": TaskSpec(
        name="deepscaler",
        grader="math",
        splits=("train",),
        parse_row=parse_deepscaler,
        hub={"train": HubSource("agentica-org/DeepScaleR-Preview-Dataset", None, "train")},
    ),
    "amc23": TaskSpec(
        name="amc23",
        grader="math",
        splits=("test",),
        parse_row=parse_competition,
        hub={"test": HubSource("math-ai/amc23", None, "test")},
        local={"test": "amc23/test.jsonl"},
    ),
    "aime24": TaskSpec(
        name="aime24",
        grader="math",
        splits=("test",),
        parse_row=parse_competition,
        hub={"test": HubSource("HuggingFaceH4/aime_2024", None, "train")},
        local={"test": "aime24/test.jsonl"},
    ),
    "arith": TaskSpec(
        name="arith",
        grader="numeric",
        splits=ARITH_SPLITS,
        generate=load_arith,
        options=("min_ops", "max_ops"),
    ),
}


def get_task(name: str) -> TaskSpec:
    """The registered task, or a ConfigError listing the known ones."""
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed JSON or the RowError for that line) for each non-blank line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"Cannot read data file {path}: {exc.strerror}.") from exc
    with handle:
        for lineno, raw in enumerate(handle, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield where, RowError(None, "is not valid UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, RowError(None, f"is not valid JSON ({exc.msg})")


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(`file:row N`, row dict) of a local Parquet file (the hub's own storage format)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged or foreign file
        raise DataError(f"Cannot read Parquet file {path}: {exc}.") from exc
    for index, row in enumerate(table.to_pylist()):
        yield f"{path}:row {index}", row


def _hub_rows(source: HubSource) -> Iterator[tuple[str, Any]]:
    """Rows of a hub dataset; `datasets` is imported only here because it is slow to import."""
    import datasets

    try:
        dataset = datasets.load_dataset(source.path, source.config, split=source.split)
    except Exception as exc:  # any hub or network failure: the fix is the same
        raise DataError(
            f"Cannot load hub dataset {source.path} split {source.split!r} ({exc}); "
            "pass path= to a local JSONL copy."
        ) from exc
    for index, row in enumerate(dataset):
        yield f"{source.path}[{source.split}] row {index}", row


def resolve_local(spec: TaskSpec, split: str, path: Path) -> Path:
    """A file is used as is; a folder must hold `{split}.jsonl`, `{split}.parquet` or the task's
    shared-data file."""
    if not path.is_dir():
        if not path.exists():
            raise DataError(f"Data file {path} does not exist.")
        return path
    candidates = [path / f"{split}.jsonl", path / f"{split}.parquet"]
    if split in spec.local:
        candidates.append(path / spec.local[split])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Data folder {path} has no {' or '.join(str(c) for c in candidates)} "
        f"for task {spec.name!r} split {split!r}."
    )


def load_task(
    name: str,
    split: str,
    path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    **options: Any,
) -> list[Record]:
    """The first `limit` records of a task's split, from `path` (a JSONL or Parquet file, or a
    folder) or the hub.

    `on_error="skip"` drops malformed rows with one warning per source instead of raising.
    `options` go to a generated task's generator (arith: `min_ops`, `max_ops`).
    """
    spec = get_task(name)
    if split not in spec.splits:
        raise ConfigError(
            f"Unknown split {split!r} for task {name!r}; known splits: {', '.join(spec.splits)}."
        )
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}.")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(spec.options) or "none"
        raise ConfigError(
            f"Unknown option {unknown[0]!r} for task {name!r}; known options: {known}."
        )
    if spec.generate is not None:
        if path is not None:
            raise ConfigError(f"Task {name!r} is generated and takes no path (got {path!r}).")
        return spec.generate(split, limit, **options)
    assert spec.parse_row is not None

    if path is not None:
        source = str(resolve_local(spec, split, Path(path)))
        reader = _parquet_rows if source.endswith(".parquet") else _jsonl_rows
        rows = reader(Path(source))
    elif split in spec.hub:
        hub = spec.hub[split]
        source = f"hub dataset {hub.path} split {hub.split!r}"
        rows = _hub_rows(hub)
    else:
        local = spec.local.get(split, f"{split}.jsonl")
        raise ConfigError(
            f"Task {name!r} split {split!r} has no hub source; pass path= to a local copy "
            f"(in the shared data folder: {local})."
        )

    records: list[Record] = []
    skipped: list[str] = []
    for index, (where, row) in enumerate(rows):
        try:
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, Mapping):
                raise RowError(None, f"is not a JSON object (got {type(row).__name__})")
            records.append(spec.parse_row(row, f"{name}/{split}/{index}"))
        except RowError as exc:
            message = f"{where}: {exc}."
            if on_error == "raise":
                raise DataError(message) from None
            skipped.append(message)
        if limit is not None and len(records) >= limit:
            break
    if skipped:
        log.warning(
            "Skipped %d malformed rows of %s for task %r (first: %s)",
            len(skipped),
            source,
            name,
            skipped[0],
        )
    if not records:
        raise DataError(f"No usable rows for task {name!r} split {split!r} in {source}.")
    return records
