"""Task loading from the shared data, the arith generator, and errors on bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest

from lrt.data import TASKS, Record, generate_arith, load_task
from lrt.data.arith import MAX_VALUE
from lrt.data.parsers import RowError, last_boxed, parse_lsat, parse_svamp
from lrt.errors import ConfigError, DataError

# (task, split, file under the data folder, expected records): the README's row counts.
SHARED = [
    ("gsm8k", "train", "gsm8k/train.jsonl", 7473),
    ("gsm8k", "test", "gsm8k/test.jsonl", 989),
    ("math", "test", "math500/test.jsonl", 375),
    ("lsat", "test", "lsat/lsat-ar.jsonl", 230),
    ("lsat_lr", "test", "lsat/lsat-lr.jsonl", 510),
    ("lsat_rc", "test", "lsat/lsat-rc.jsonl", 269),
    ("lsat", "train", "ar_lsat/train_ar.jsonl", 1585),
    ("lsat", "validation", "ar_lsat/val_ar.jsonl", 231),
    ("lsat_lr", "validation", "ar_lsat/val_lr.jsonl", 506),
    ("lsat_rc", "validation", "ar_lsat/val_rc.jsonl", 270),
]


def _check_records(records: list[Record], grader: str) -> None:
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert r.question.strip() and r.answer.strip() and r.answer == r.answer.strip()
        if grader == "numeric":
            assert re.fullmatch(r"-?\d+(\.\d+)?", r.answer), r
        if grader == "choice":
            assert r.choices is not None and len(r.choices) == 5
            assert all(c.strip() and not re.match(r"\s*\([A-E]\)", c) for c in r.choices)
            assert r.answer in "ABCDE"
        else:
            assert r.choices is None and r.solution


@pytest.mark.parametrize(("task", "split", "rel", "count"), SHARED)
def test_shared_files_load(data_dir: Path, task: str, split: str, rel: str, count: int) -> None:
    by_file = load_task(task, split, data_dir / rel)
    assert len(by_file) == count
    _check_records(by_file, TASKS[task].grader)
    # The data folder itself resolves to the same file through TaskSpec.local.
    assert load_task(task, split, data_dir) == by_file


def test_math_train_has_two_empty_boxed_rows(data_dir: Path, caplog) -> None:
    """Upstream MATH train has two solutions ending in an empty \\boxed{}: reported, skippable."""
    path = data_dir / "math/train.jsonl"
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:5530: field 'solution' "):
        load_task("math", "train", path)
    with caplog.at_level(logging.WARNING):
        records = load_task("math", "train", path, on_error="skip")
    assert len(records) == 7500 - 2
    assert "Skipped 2 malformed rows" in caplog.text
    _check_records(records, "math")


def test_row_contents(data_dir: Path) -> None:
    gsm = load_task("gsm8k", "train", data_dir, limit=3)
    assert len(gsm) == 3 and gsm[0].answer == "72" and gsm[0].id == "gsm8k/train/0"
    assert "<<" not in gsm[0].solution and "####" not in gsm[0].solution
    math500 = load_task("math", "test", data_dir, limit=1)[0]
    assert math500.answer == "p - q" and math500.id == "test/intermediate_algebra/1994.json"
    ar = load_task("lsat", "test", data_dir, limit=1)[0]
    assert ar.question.startswith("Of the eight students") and "\n\n" in ar.question
    assert ar.answer == "C" and ar.choices[0].startswith("Mon. morning: Helen")
    ar_train = load_task("lsat", "train", data_dir, limit=1)[0]
    assert ar_train.id == "199106_2-G_1_1" and ar_train.answer == "B"


def test_lsat_layouts_agree() -> None:
    """AGIEval, AR-LSAT and hails hub rows of one question give the same Record content."""
    options = ["(A)one", "(B)two", "(C)three", "(D)four", "(E)five"]
    agieval = {"passage": "P.", "question": "Q?", "options": options, "label": "C"}
    ar_lsat = {"context": "P.", "question": "Q?", "answers": [o[3:] for o in options], "label": 2}
    hub = {
        "query": "Q: P. Q? Answer Choices: " + " ".join(options) + "\nA: Among A through E, the "
        "answer is",
        "choices": options,
        "gold": [2],
    }
    records = [parse_lsat(row, "x") for row in (agieval, ar_lsat, hub)]
    assert {r.answer for r in records} == {"C"}
    assert {r.choices for r in records} == {("one", "two", "three", "four", "five")}
    assert records[0].question == records[1].question == "P.\n\nQ?"
    assert records[2].question == "P. Q?"


def test_last_boxed() -> None:
    assert last_boxed(r"so \boxed{1} then \boxed{\frac{a}{b^{2}}}.") == r"\frac{a}{b^{2}}"
    assert last_boxed(r"$\boxed{\{1, 2\}}$") == r"\{1, 2\}"
    assert last_boxed(r"our answer is $\boxed 2$.") == "2"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("no box") is None


# --- arith -------------------------------------------------------------------------------------


def _evaluate(question: str) -> tuple[int, int]:
    """(answer, number of operations) recomputed from the question text alone."""
    sentences = re.findall(r"(Start with|Add|Subtract|Multiply by) (\d+)\.", question)
    value = int(sentences[0][1])
    for op, amount in sentences[1:]:
        value = {"Add": value + int(amount), "Subtract": value - int(amount)}.get(
            op, value * int(amount)
        )
        assert 0 <= value <= MAX_VALUE
    return value, len(sentences) - 1


def test_arith_deterministic_and_correct() -> None:
    a = generate_arith(300, seed=7, min_ops=2, max_ops=4)
    assert a == generate_arith(300, seed=7, min_ops=2, max_ops=4)
    assert a != generate_arith(300, seed=8, min_ops=2, max_ops=4)
    assert generate_arith(50, seed=7, min_ops=2, max_ops=4) == a[:50]
    ops_seen = set()
    for i, record in enumerate(a):
        answer, n_ops = _evaluate(record.question)
        assert record.answer == str(answer) and record.id == f"arith/7/{i}"
        assert record.question.endswith("What is the result?")
        assert record.solution.count("=") == n_ops
        assert record.solution.endswith(f"= {answer}.")
        ops_seen.add(n_ops)
    assert ops_seen == {2, 3, 4}


def test_arith_splits_disjoint() -> None:
    train = load_task("arith", "train")
    validation = load_task("arith", "validation")
    test = load_task("arith", "test")
    assert (len(train), len(validation), len(test)) == (20000, 500, 500)
    assert load_task("arith", "test", limit=20) == test[:20]
    train_q = {r.question for r in train}
    assert not train_q & {r.question for r in test}
    assert not train_q & {r.question for r in validation}
    assert not {r.question for r in validation} & {r.question for r in test}
    difficulties = [_evaluate(r.question)[1] for r in test]
    assert set(difficulties) == set(range(1, 7))


def test_arith_options_through_load_task() -> None:
    easy = load_task("arith", "test", limit=200, min_ops=1, max_ops=2)
    assert {_evaluate(r.question)[1] for r in easy} == {1, 2}
    train = load_task("arith", "train", limit=2000, min_ops=1, max_ops=2)
    assert not {r.question for r in easy} & {r.question for r in train}


def test_arith_amounts_bound_every_number() -> None:
    """`max_amount` and `max_factor` bound what is added, subtracted and multiplied (the
    default job's easier task); the defaults draw the same questions as before they existed."""
    small = load_task("arith", "test", limit=300, max_ops=2, max_amount=20, max_factor=4)
    amounts = [int(n) for r in small for n in re.findall(r"(?:Add|Subtract) (\d+)", r.question)]
    factors = [int(n) for r in small for n in re.findall(r"Multiply by (\d+)", r.question)]
    assert max(amounts) == 20 and max(factors) == 4 and min(factors) == 2
    wide = load_task("arith", "test", limit=300, max_ops=2)
    assert max(int(n) for r in wide for n in re.findall(r"(?:Add|Subtract) (\d+)", r.question)) > 20
    assert wide == load_task("arith", "test", limit=300, max_ops=2, max_amount=30, max_factor=5)
    # The questions every earlier measurement used (1-2 operations, the wide amounts): a digest
    # of the 500 test questions as the generator drew them before these options existed.
    earlier = load_task("arith", "test", max_ops=2, max_amount=30, max_factor=5)
    digest = hashlib.sha256("".join(r.question for r in earlier).encode()).hexdigest()
    assert digest[:16] == "41e5b2666c947a01"
    sums = load_task("arith", "test", limit=100, max_ops=3, operations=["add", "subtract"])
    assert not any("Multiply" in r.question for r in sums)
    with pytest.raises(ConfigError, match="data.options.max_factor=1 must be an integer >= 2"):
        load_task("arith", "test", limit=3, max_factor=1)


def test_arith_bad_args() -> None:
    with pytest.raises(ConfigError, match="min_ops <= max_ops"):
        generate_arith(5, seed=0, min_ops=3, max_ops=2)
    with pytest.raises(ConfigError, match="takes no path"):
        load_task("arith", "train", path="/tmp/x.jsonl")
    with pytest.raises(ConfigError, match="Unknown option 'ops' for task 'arith'; known options"):
        load_task("arith", "train", ops=3)
    with pytest.raises(ConfigError, match="Unknown option 'min_ops' for task 'gsm8k'"):
        load_task("gsm8k", "train", min_ops=3)


# --- errors ------------------------------------------------------------------------------------


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = json.dumps({"question": "How many?", "answer": "2 + 2 = 4\n#### 4"})


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"question": "How many?", "answer": ', r":2: row is not valid JSON"),
        (json.dumps({"answer": "#### 4"}), r":2: field 'question' is missing"),
        (
            json.dumps({"question": "How many?", "answer": "it is 4"}),
            r":2: field 'answer' has no '#### <number>' final answer",
        ),
        (json.dumps(["a", "list"]), r":2: row is not a JSON object"),
    ],
)
def test_malformed_rows(tmp_path: Path, bad_row: str, message: str, caplog) -> None:
    path = _write(tmp_path / "train.jsonl", [GOOD, bad_row, GOOD])
    with pytest.raises(DataError, match="^" + re.escape(str(path)) + message):
        load_task("gsm8k", "train", path)
    with caplog.at_level(logging.WARNING):
        records = load_task("gsm8k", "train", tmp_path, on_error="skip")
    assert [r.id for r in records] == ["gsm8k/train/0", "gsm8k/train/2"]
    assert f"Skipped 1 malformed rows of {path}" in caplog.text


def test_math_row_without_boxed(tmp_path: Path) -> None:
    row = json.dumps({"problem": "1+1?", "solution": "It is 2.", "level": "Level 1"})
    path = _write(tmp_path / "train.jsonl", [row])
    with pytest.raises(DataError, match=r":1: field 'solution' has no \\boxed"):
        load_task("math", "train", path)


def test_lsat_bad_label(tmp_path: Path) -> None:
    row = {"passage": "P", "question": "Q", "options": ["(A)a", "(B)b"], "label": "E"}
    path = _write(tmp_path / "test.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=r":1: field 'label' is not a letter A-B"):
        load_task("lsat", "test", path)


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl does not exist"):
        load_task("gsm8k", "test", tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"has no .*test\.jsonl"):
        load_task("gsm8k", "test", tmp_path)
    bad = _write(tmp_path / "test.jsonl", ["{not json"])
    with pytest.raises(DataError, match="No usable rows"):
        load_task("gsm8k", "test", bad, on_error="skip")
    _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(DataError, match="No usable rows"):
        load_task("gsm8k", "test", tmp_path / "empty.jsonl")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"Unknown task 'gsm9k'; known tasks: aime24, amc23, arith, deepscaler, gsm8k",
    ):
        load_task("gsm9k", "train")
    with pytest.raises(ConfigError, match=r"Unknown split 'dev' for task 'gsm8k'; known splits"):
        load_task("gsm8k", "dev")
    with pytest.raises(ConfigError, match="on_error"):
        load_task("gsm8k", "train", tmp_path, on_error="ignore")
    with pytest.raises(ConfigError, match="limit"):
        load_task("gsm8k", "train", tmp_path, limit=0)
    with pytest.raises(ConfigError, match="has no hub source; pass path="):
        load_task("lsat", "train")


def test_hub_rows_use_the_same_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path (no network here): rows from load_dataset become Records, failures explain."""
    datasets = pytest.importorskip("datasets")
    calls = []
    hub_row = {
        "query": "Q: P. Q? Answer Choices: (A)x (B)y",
        "choices": ["(A)x", "(B)y"],
        "gold": [1],
    }

    def fake_load_dataset(path: str, config: str | None, split: str) -> list[dict]:
        calls.append((path, config, split))
        return [hub_row, {"query": "Q: broken", "choices": ["(A)x", "(B)y"], "gold": [7]}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"hails/agieval-lsat-ar\[test\] row 1: field 'gold'"):
        load_task("lsat", "test")
    records = load_task("lsat", "test", on_error="skip")
    assert calls[0] == ("hails/agieval-lsat-ar", None, "test")
    assert [(r.question, r.answer, r.choices) for r in records] == [("P. Q?", "B", ("x", "y"))]

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"openai/gsm8k split 'train' .*pass path="):
        load_task("gsm8k", "train")


# --- the paper's data: OpenR1-Math and DeepScaleR (fixture files in the upstream layout) ---------

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_file(name: str, fmt: str, tmp_path: Path) -> Path:
    """`tests/fixtures/<name>.jsonl`, or the same rows written as Parquet (the hub's format)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = FIXTURES / f"{name}.jsonl"
    if fmt == "jsonl":
        return jsonl
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    return tmp_path / "train.parquet"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_openr1_math_loads_verified_responses(fmt: str, tmp_path: Path) -> None:
    from lrt.data.prompts import PromptConfig, target_text
    from lrt.grading import grade

    records = load_task("openr1_math", "train", path=fixture_file("openr1_math", fmt, tmp_path))
    assert [r.answer for r in records] == ["5", "\\frac{3}{4}", "-3"]
    assert records[0].id == "11111111-aaaa-4bbb-8ccc-000000000001"
    # The first generation math-verify marked correct, after its reasoning trace.
    assert records[0].response == "$2+3=5$, so the answer is $\\boxed{5}$."
    assert records[1].response.startswith("Dividing numerator")
    assert records[2].response is None  # no verified generation
    for r in records:
        assert grade("openr1_math", f"The answer is $\\boxed{{{r.answer}}}$.", r)
        if r.response:
            assert grade("openr1_math", r.response, r)
    prompt = PromptConfig(target="response")
    assert target_text(records[0], prompt) == records[0].response
    assert target_text(records[2], prompt) is None
    assert target_text(records[2], PromptConfig()) == "The answer is -3."


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_deepscaler_loads_and_grades_its_gold(fmt: str, tmp_path: Path) -> None:
    from lrt.grading import grade

    records = load_task("deepscaler", "train", path=fixture_file("deepscaler", fmt, tmp_path))
    assert [r.answer for r in records] == ["56", "13", "4"]
    assert all(r.solution for r in records)
    assert all(grade("deepscaler", f"So we get \\boxed{{{r.answer}}}", r) for r in records)
    assert not grade("deepscaler", "\\boxed{57}", records[0])


def test_openr1_bad_rows_are_named(tmp_path: Path) -> None:
    row = json.loads((FIXTURES / "openr1_math.jsonl").read_text().splitlines()[0])
    row["correctness_math_verify"] = [True]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(path))}:1: field 'correctness_math_verify' has 1 verdicts for 2",
    ):
        load_task("openr1_math", "train", path=path)


def test_response_target_skips_or_names_records_without_one(tmp_path: Path) -> None:
    from lrt.data.datamodule import with_targets
    from lrt.data.prompts import PromptConfig, format_target

    records = load_task("openr1_math", "train", path=FIXTURES / "openr1_math.jsonl")
    prompt = PromptConfig(target="response")
    assert len(with_targets(records, prompt, "skip", "data.train")) == 2
    with pytest.raises(
        DataError, match="target='response' but record '11111111-aaaa-4bbb-8ccc-0+3'"
    ):
        format_target(records[2], prompt)


def test_a_split_can_come_from_another_task(compose_train) -> None:
    from lrt.config import validate_train

    cfg = compose_train("data=openr1_math")
    validate_train(cfg)
    assert cfg.data.test.task == "math"
    with pytest.raises(ConfigError, match="data.test.task='gsm8k' is graded as 'numeric'"):
        validate_train(compose_train("data=openr1_math", "data.test.task=gsm8k"))


def test_competition_lists_load_from_the_shared_data(data_dir: Path) -> None:
    from lrt.grading import grade

    for task, count in (("amc23", 40), ("aime24", 30)):
        records = load_task(task, "test", path=data_dir)
        assert len(records) == count
        assert all(grade(task, f"\\boxed{{{r.answer}}}", r) for r in records)
    assert load_task("amc23", "test", path=data_dir)[0].answer == "27"  # upstream 27.0


def test_svamp_poses_body_and_question_and_grades_its_float_answers(data_dir: Path) -> None:
    from lrt.grading import grade

    records = load_task("svamp", "test", path=data_dir)
    assert len(records) == 1000
    first = records[0]
    assert first.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert (first.id, first.answer, first.solution) == ("chal-1", "51", "( 76.0 - 25.0 )")
    assert all(grade("svamp", f"The answer is {r.answer}.", r) for r in records)
    assert not any(r.answer.endswith(".0") for r in records)
    with pytest.raises(RowError, match="field 'Answer' is not a number"):
        parse_svamp({"Body": "b", "Question": "q", "Answer": "51"}, "x")


def test_validation_carved_from_train_is_seeded_and_disjoint(data_dir: Path) -> None:
    """`data.val.from_train`: a seeded slice of the whole training split, independent of
    `data.train.limit`, that training never sees."""
    from lrt.data.loading import load_train_val
    from lrt.data.settings import DataConfig, SplitConfig

    def data(limit: int | None = None, seed: int = 1) -> DataConfig:
        path = str(data_dir / "gsm8k" / "train.jsonl")
        return DataConfig(
            task="gsm8k",
            train=SplitConfig(split="train", path=path, limit=limit),
            val=SplitConfig(from_train=True, limit=50, seed=seed),
        )

    kept, held = load_train_val(data())
    assert len(held) == 50 and len(kept) == 7473 - 50
    assert not {r.id for r in held} & {r.id for r in kept}
    kept_100, held_again = load_train_val(data(limit=100))
    assert [r.id for r in held_again] == [r.id for r in held] and len(kept_100) == 100
    other = load_train_val(data(seed=2))
    assert [r.id for r in other[1]] != [r.id for r in held]


def test_max_target_tokens_cuts_long_targets_keeping_their_start_and_counts_them(
    tiny_backbone, caplog
) -> None:
    """`data.max_target_tokens` bounds every trained target (EOS included): a longer one keeps
    its first tokens and no EOS (it did not end there), a shorter one is untouched with its
    EOS, and each split's log line says how many were cut."""
    from lrt.data.datamodule import LRTDataModule
    from lrt.data.prompts import PromptConfig
    from lrt.data.settings import DataConfig, SplitConfig

    tok = tiny_backbone.tokenizer

    def module(cap: int | None) -> LRTDataModule:
        data = DataConfig(
            task="arith",
            train=SplitConfig(split="train", limit=12),
            val=SplitConfig(split="validation", limit=4),
            prompt=PromptConfig(target="solution"),
            max_target_tokens=cap,
        )
        dm = LRTDataModule(data, tok, None, batch_size=12)
        dm.setup()
        return dm

    whole = module(None)
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in whole.train_set.targets]
    cap = sorted(lengths)[len(lengths) // 2]  # cuts about half of them
    assert min(lengths) < cap - 1 and max(lengths) > cap
    with caplog.at_level(logging.INFO, logger="lrt.data.datamodule"):
        capped = module(cap)
    keys = [(i, i) for i in range(len(lengths))]
    full, cut = whole.collate_keys(keys), capped.collate_keys(keys)
    assert cut["answer_mask"].sum(1).max() == cap
    for i, n in enumerate(lengths):
        ids = full["answer_ids"][i, : full["answer_mask"][i].sum()]
        got = cut["answer_ids"][i, : cut["answer_mask"][i].sum()]
        if n + 1 <= cap:
            assert got.tolist() == ids.tolist() and got[-1] == tok.eos_token_id
        else:
            assert got.tolist() == ids[:cap].tolist()  # the start, no EOS
    expected = sum(n + 1 > cap for n in lengths)
    assert f"data.train: {expected} of 12 targets cut to {cap} tokens" in caplog.text
    assert "data.val: " in caplog.text and f"of 4 targets cut to {cap} tokens" in caplog.text
    with pytest.raises(ConfigError, match=r"^data.max_target_tokens=0 must be a positive"):
        DataConfig(max_target_tokens=0)
