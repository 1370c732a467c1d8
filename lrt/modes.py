"""Inference modes: names, labels (`cot@256`), what each needs, and the decoding settings.

Every mode answers the same question prompt with the same grader (DESIGN.md sections 1 and 5);
they differ only in what happens between the prompt and the answer:

- `lrt`: the reasoner's K latents inside the thinking span, then the answer;
- `lrt-swap`: the same, but each question gets the latents of another question of its batch
  (a fixed derangement): the control for "do the latents carry the question?" (DESIGN.md
  section 5); its gap to `lrt` is a lower bound on what they carry;
- `lrt-blind`: the same latents, with the question withheld from the base (its attention mask
  0 on the user's text, positions contiguous) while the reasoner still reads it: what the
  latents alone carry of the question, the channel (DESIGN.md section 5);
- `direct`: the model's own chat template with no thinking span at all (its non-thinking mode
  where it has one), then the answer: the natural baseline of a model without thinking;
- `nothink`: an empty thinking span (Ma et al.'s NoThinking prefill inside it for models with
  a thinking mode, `model.nothink_prefill`), then the answer;
- `cot`: explicit thinking for up to a token budget, then the answer (budget forcing, also
  where the model ends inside its thinking), graded on the text after the close marker only:
  an answer left in the thinking is none;
- `hybrid`: `lrt`, and `cot` for the questions whose `lrt` answer is not confident;
- `stir`: `cot` steered by a STIR library (`lrt/baselines/stir/`): asked like `cot`, in the
  model's default system line, with the same budget (an empty library decodes as `cot`).
- `rim`: RiM's K memory blocks in one pass after the prompt (its LoRA-adapted base), then the
  answer (`lrt.baselines.rim`, evaluated per adapter named by `evaluate.yaml`'s `rim`).

A mode label may carry a budget (`cot@256`), so each budget is its own row of a results table.
The baselines (`direct`, `nothink`, `cot`) are asked in the model's default system line
(`model.baseline_system_prompt`), `lrt` and `hybrid` in the run's (`model.system_prompt`);
all share the task's answer budget (`data.max_answer_tokens`) and grader.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lrt.errors import ConfigError


@dataclass(frozen=True)
class Mode:
    name: str
    needs_reasoner: bool
    """Evaluated once per reasoner; the others depend on the base alone (checkpoint `base`)."""
    budgeted: bool
    """Has an explicit thinking span, hence a token budget (`label@N`)."""
    baseline: bool
    """A baseline of the base model alone: asked in its default system line."""
    no_thinking: bool = False
    """Answers without thinking: the rows `lrt` is compared with at the same budget."""
    method: str | None = None
    """For another method's mode (STIR, RiM): the `evaluate.yaml` key naming what answers in
    it (`lrt.evaluation.methods` loads it); evaluated once per thing loaded."""


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("lrt", needs_reasoner=True, budgeted=False, baseline=False),
        Mode("nothink", needs_reasoner=False, budgeted=False, baseline=True, no_thinking=True),
        Mode("cot", needs_reasoner=False, budgeted=True, baseline=True),
        Mode("hybrid", needs_reasoner=True, budgeted=True, baseline=False),
        Mode("direct", needs_reasoner=False, budgeted=False, baseline=True, no_thinking=True),
        Mode("stir", needs_reasoner=False, budgeted=True, baseline=True, method="stir_library"),
        Mode("rim", needs_reasoner=False, budgeted=False, baseline=False, method="rim"),
        Mode("lrt-swap", needs_reasoner=True, budgeted=False, baseline=False),
        Mode("lrt-blind", needs_reasoner=True, budgeted=False, baseline=False),
    )
}
DECODED = ("lrt", "direct", "nothink", "cot")
"""Modes `LatentLM.generate` decodes in one pass; the others are compositions of these."""


@dataclass
class DecodeConfig:
    """Decoding settings shared by every mode."""

    max_answer_tokens: int = 32
    budget: int = 256
    force_answer: str = "The answer is"
    temperature: float = 0.0
    top_p: float = 1.0
    latent_noise: float = 0.0
    """`lrt` (and `hybrid`'s latent attempt) with Gaussian noise on the latents, sigma this
    ratio of the embedding RMS: what latent-space GRPO samples, so it can be measured."""
    hybrid_threshold: float = -0.5
    """`hybrid` re-does with `cot` the questions whose `lrt` answer has a mean token log-prob
    below this (-0.5: a geometric-mean token probability of about 0.6)."""


def parse_mode(label: str) -> tuple[str, int | None]:
    """`'cot@256'` -> `('cot', 256)`; `'lrt'` -> `('lrt', None)`; unknown modes are refused."""
    name, _, budget = label.partition("@")
    if name not in MODES:
        raise ConfigError(f"modes: unknown mode {label!r}; known modes: {', '.join(MODES)}")
    if not budget:
        return name, None
    if not MODES[name].budgeted or not budget.isdigit() or int(budget) <= 0:
        budgeted = " and ".join(m.name for m in MODES.values() if m.budgeted)
        raise ConfigError(
            f"modes: {label!r} is invalid; only {budgeted} take a positive budget after '@'"
        )
    return name, int(budget)


def mode_of(label: str) -> Mode:
    return MODES[parse_mode(label)[0]]


def needs_reasoner(label: str) -> bool:
    return mode_of(label).needs_reasoner


def of_base(label: str) -> bool:
    """Answered by the base model alone (evaluated once per task, as checkpoint `base`)."""
    mode = mode_of(label)
    return not mode.needs_reasoner and mode.method is None


def with_controls(modes: Iterable[str], blind: bool = False) -> list[str]:
    """`modes` with `lrt-swap` (and with `blind`, `lrt-blind`) right after `lrt` when not
    there already: every `lrt` result comes with its controls, at the cost of a decode each
    and no training."""
    labels = list(modes)
    after = "lrt"
    for control in ["lrt-swap", "lrt-blind"] if blind else ["lrt-swap"]:
        if after in labels and control not in labels:
            labels.insert(labels.index(after) + 1, control)
        after = control
    return labels


def mode_labels(modes: Iterable[str], budgets: Sequence[int], blind: bool = False) -> list[str]:
    """Expand budgeted modes given without a budget into one label per budget
    (`cot` -> `cot@256`, `cot@512`), and add `lrt`'s controls (`with_controls`)."""
    labels: list[str] = []
    for label in with_controls(modes, blind):
        name, budget = parse_mode(label)
        if MODES[name].budgeted and budget is None:
            if not budgets:
                raise ConfigError(f"cot_budgets must list at least one budget for mode {name!r}")
            labels += [f"{name}@{b}" for b in budgets]
        else:
            labels.append(label)
    return labels
