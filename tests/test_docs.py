"""The documentation checked against the tree: README.md and docs/**/*.md.

- Every relative link resolves to a file or folder of the repository (http(s) and other
  schemes and pure `#anchor` links are skipped; a `#fragment` is stripped).
- Every `python train.py ...` and `python evaluate.py ...` command line they quote, in a code
  block or in inline code, composes with Hydra against `conf/train.yaml` or
  `conf/evaluate.yaml` (what `python train.py ... --cfg job` checks, in-process, without a
  subprocess per line). A placeholder such as `<run>` is a string value; as a config group's
  choice (`experiment=paper_sft_<model>`) it stands for every option of the group it matches.
  `-m` sweeps compose once per swept value; `hydra.*` / `hydra/...` overrides (launchers,
  run folders) are left to Hydra's runtime, and train.py's own `resume=` is dropped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+\"[^\"\n]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*(\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
COMMAND = re.compile(r"python[\w.]*\s+(\./)?(train|evaluate)\.py\b")
PYTHON = re.compile(r"^(\S*/)?python(3(\.\d+)*)?$")
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"<[A-Za-z.][^<>`\n]{0,60}>")
MARK = re.compile(r"__ph\d+__")
OPERATORS = {"&&", "||", "|", ";", "&", ";;"}
VALUED_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i"}


@dataclass
class Command:
    line: int
    text: str
    script: str  # train | evaluate
    overrides: list[str]
    multirun: bool


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_text(text: str) -> tuple[list[tuple[int, str]], str]:
    """(fenced code lines joined at trailing backslashes, with their first line number), and
    the text outside the fences with those lines blanked (line numbers kept)."""
    code: list[tuple[int, str]] = []
    prose: list[str] = []
    fenced = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            prose.append("")
            continue
        if not fenced:
            prose.append(line)
            continue
        prose.append("")
        start, joined = pending if pending else (number, "")
        joined = f"{joined} {line.strip()}" if joined else line.strip()
        if joined.endswith("\\"):
            pending = (start, joined[:-1].rstrip())
        else:
            pending = None
            code.append((start, joined))
    if pending:
        code.append(pending)
    return code, "\n".join(prose)


def inline_spans(prose: str) -> list[tuple[int, str]]:
    """Inline code spans (a span may run across a line break, not across a paragraph)."""
    spans = []
    for match in INLINE.finditer(prose):
        body = match.group(2)
        if "\n\n" in body:
            continue
        line = prose.count("\n", 0, match.start()) + 1
        spans.append((line, " ".join(body.split())))
    return spans


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside code."""
    _, prose = split_text(text)
    prose = INLINE.sub(lambda m: "\n" * m.group(0).count("\n"), prose)
    found = [
        (prose.count("\n", 0, match.start()) + 1, match.group(1).strip("<>"))
        for match in LINK.finditer(prose)
    ]
    previous = ""  # a reference definition `[label]: target` cannot interrupt a paragraph
    for number, line in enumerate(prose.splitlines(), start=1):
        match = REFERENCE.match(line)
        if match and (not previous.strip() or REFERENCE.match(previous)):
            found.append((number, match.group(1).strip("<>")))
        previous = line
    return sorted(found)


def link_errors(doc: Path, root: Path = ROOT) -> list[str]:
    errors = []
    for line, target in links(doc.read_text(encoding="utf-8")):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (root / path.lstrip("/")) if path.startswith("/") else (doc.parent / path)
        if not resolved.exists():
            errors.append(f"{doc.relative_to(root)}:{line}: link {target!r} does not resolve")
    return errors


def parse_commands(line: int, text: str) -> list[Command]:
    """The train.py / evaluate.py command lines in one code line or inline span."""
    if not COMMAND.search(text):
        return []
    marks: dict[str, str] = {}

    def mark(match: re.Match[str]) -> str:
        marks[key := f"__ph{len(marks)}__"] = match.group(0)
        return key

    lexer = shlex.shlex(PLACEHOLDER.sub(mark, text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    tokens = list(lexer)
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    commands = []
    for segment in segments:
        while segment and (ENV.match(segment[0]) or segment[0] == "env"):
            segment = segment[1:]
        if len(segment) < 2 or not PYTHON.match(segment[0]):
            continue
        script = segment[1].removeprefix("./")
        if script not in ("train.py", "evaluate.py"):
            continue
        overrides, multirun, skip = [], False, False
        for arg in segment[2:]:
            if skip:
                skip = False
            elif arg in ("-m", "--multirun"):
                multirun = True
            elif arg in VALUED_FLAGS:
                skip = True
            elif arg.startswith("-") or "=" not in arg:
                continue  # another flag, or prose such as `...`
            else:
                overrides.append(arg)
        commands.append(Command(line, text, script.removesuffix(".py"), overrides, multirun))
    for command in commands:  # marks back to text only where they are not values
        command.text = MARK.sub(lambda m: marks[m.group(0)], command.text)
    return commands


def commands(text: str) -> list[Command]:
    code, prose = split_text(text)
    found = []
    for line, body in [*code, *inline_spans(prose)]:
        found.extend(parse_commands(line, body))
    return sorted(found, key=lambda c: c.line)


def group_choices(key: str, value: str, conf: Path) -> list[str] | None:
    """Every option of config group `key` a placeholder value stands for (None: not a group
    choice with a placeholder)."""
    group = conf / key.lstrip("+~")
    if not MARK.search(value) or not group.is_dir():
        return None
    pattern = re.compile("^" + ".*".join(map(re.escape, MARK.split(value))) + "$")
    return sorted(p.stem for p in group.glob("*.yaml") if pattern.match(p.stem)) or [value]


def compositions(command: Command, conf: Path) -> list[list[str]]:
    """The override lists a command stands for: one per placeholder group option and per
    swept value (`-m`), hydra's own overrides and train.py's `resume=` left out."""
    choices: list[list[str]] = []
    for override in command.overrides:
        key, _, value = override.partition("=")
        bare = key.lstrip("+~")
        if bare.startswith(("hydra.", "hydra/")) or (
            command.script == "train" and bare == "resume"
        ):
            continue
        options = group_choices(key, value, conf)
        choices.append([f"{key}={o}" for o in options] if options else [override])
    if command.multirun:
        parser = OverridesParser.create()
        swept = []
        for options in choices:
            values = []
            for text, one in zip(options, parser.parse_overrides(options), strict=True):
                if one.is_sweep_override():
                    key = text.partition("=")[0]
                    values.extend(f"{key}={value}" for value in one.sweep_string_iterator())
                else:
                    values.append(text)
            swept.append(values)
        choices = swept
    width = max((len(options) for options in choices), default=1)
    return [[options[min(i, len(options) - 1)] for options in choices] for i in range(width)]


COMPOSED: dict[tuple[str, str, tuple[str, ...]], str | None] = {}


def compose_error(script: str, overrides: list[str]) -> str | None:
    """Hydra's error composing `script` with `overrides` (None: it composes)."""
    try:
        compose(config_name=script, overrides=overrides)
    except Exception as err:  # noqa: BLE001 - every failure is reported with its line
        return " ".join(f"{type(err).__name__}: {err}".split())
    return None


def compose_errors(doc: Path, root: Path = ROOT) -> list[str]:
    errors = []
    conf = root / "conf"
    found = commands(doc.read_text(encoding="utf-8"))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for command in found:
            try:
                runs = compositions(command, conf)
            except Exception as err:  # noqa: BLE001 - every failure is reported with its line
                runs, message = [], f"{type(err).__name__}: {err}"
                errors.append(
                    f"{doc.relative_to(root)}:{command.line}: {command.text}\n  {message}"
                )
            for overrides in runs:
                key = (str(conf), command.script, tuple(overrides))
                if key not in COMPOSED:  # pages quote many of the same lines
                    COMPOSED[key] = compose_error(command.script, overrides)
                if message := COMPOSED[key]:
                    errors.append(
                        f"{doc.relative_to(root)}:{command.line}: {command.text}\n"
                        f"  {' '.join(overrides)}\n  {message}"
                    )
    return errors


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_relative_link_resolves(doc: Path) -> None:
    errors = link_errors(doc)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_quoted_command_composes(doc: Path) -> None:
    errors = compose_errors(doc)
    assert not errors, "\n".join(errors)


def test_the_readme_quotes_its_commands() -> None:
    """The extraction finds what the README quotes (a silent miss would pass every line)."""
    found = commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {c.script for c in found} == {"train", "evaluate"}
    assert any(c.overrides == [] and c.script == "train" for c in found)  # the first line's job
    assert len(found) >= 15


def test_the_checks_fail_on_a_bad_link_and_an_unknown_key(tmp_path: Path) -> None:
    """A broken link, an unknown key and a misspelt group option each fail, naming file and
    line; placeholders, continuations, env assignments, sweeps and hydra overrides pass."""
    (tmp_path / "conf").symlink_to(CONF, target_is_directory=True)
    (tmp_path / "here.md").write_text("x\n", encoding="utf-8")
    doc = tmp_path / "page.md"
    doc.write_text(
        "[ok](here.md#top) [web](https://example.org/x) [anchor](#a) [bad](missing/page.md)\n"
        "```bash\n"
        "OMP_NUM_THREADS=1 .venv/bin/python train.py stage=grpo \\\n"
        "    init_from=<sft run>/reasoner/final \\\n"
        "    stage.temperature=0   # a comment\n"
        "python train.py -m reasoner.num_latents=4,8 hydra/launcher=slurm && echo done\n"
        "python train.py experiment=paper_sft_<model> resume=<run folder>\n"
        "python train.py stage.no_such_key=1\n"
        "```\n"
        "Then `python evaluate.py checkpoints=<run> modes=[lrt]\n"
        "limit=200` and `python evaluate.py tasks=[no_such_task]`.\n",
        encoding="utf-8",
    )
    found = commands(doc.read_text(encoding="utf-8"))
    assert [(c.line, c.script) for c in found] == [
        (3, "train"),
        (6, "train"),
        (7, "train"),
        (8, "train"),
        (10, "evaluate"),
        (11, "evaluate"),
    ]
    assert found[0].overrides == [
        "stage=grpo",
        "init_from=__ph0__/reasoner/final",
        "stage.temperature=0",
    ]
    assert len(compositions(found[2], CONF)) > 1  # every paper_sft_* experiment
    errors = compose_errors(doc, root=tmp_path)
    assert len(errors) == 2, errors
    assert errors[0].startswith("page.md:8: python train.py stage.no_such_key=1")
    assert errors[1].startswith("page.md:11: python evaluate.py tasks=[no_such_task]")
    assert link_errors(doc, root=tmp_path) == ["page.md:1: link 'missing/page.md' does not resolve"]
