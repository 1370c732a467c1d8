"""One graded answer, a row of `predictions.jsonl`: what `predict` writes and `metrics`,
`pairs` and `jobs` read, in a module of its own so that readers need not import decoding."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Prediction:
    """One graded answer: a row of `predictions.jsonl`."""

    id: str
    mode: str
    text: str
    """Everything decoded after the prompt's span, `cot`'s thinking included (to inspect)."""
    extracted: str | None
    """The answer read from the text after the thinking span's close marker only
    (`Generation.answer_texts`): a `\\boxed{}` left inside the thinking is not an answer."""
    correct: bool
    """Graded on that same answer part: a `cot` row cut off while thinking is wrong."""
    tokens: int
    """Tokens the model generated itself for this answer (hybrid: lrt and cot together)."""
    positions: int
    """Every position the base processed for it: the prompt, the thinking span's inputs (the K
    latents of `lrt` included) and every decoded token; the prefill cost `tokens` leaves out."""
    after_prompt: int
    """`positions` less the prompt's: what the mode itself adds to the question's cost."""
    batch_time_s: float
    """Wall time of the batch it was decoded in (prompt encode included): its latency."""
    time_per_question_s: float
    """`batch_time_s` over the batch's questions: the amortised cost at this batch size."""
    ttft_s: float
    """Time to first token: from the batch's arrival (prompt encode included) to its first
    decoded token."""
    truncated: bool
    confidence: float
    """Mean log-prob of the answer tokens (hybrid: of the `lrt` answer, the gate's input)."""
    sample: int = 0
    route: str | None = None
    """`hybrid` only: `lrt` when the gate kept the latent answer, else `cot`."""
    probe_tokens: int = 0
    """Look-ahead tokens generated and discarded (`stir`'s probes), not in `tokens`: STIR's
    `budget_used` is `tokens + probe_tokens`."""
    steps: int | None = None
    """The question's number of solution steps, where its task states them (difficulty)."""
    latent_spread: float | None = None
    """`lrt` and `lrt-swap`: the spread of the latents across the questions of its batch
    (`lrt.reasoner.latent_spread`; 0 for a question-blind prompt)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self, checkpoint: str, task: str) -> dict:
        """A line of `predictions.jsonl`: the answer with the checkpoint and task it is for
        (what `evaluate.py` writes and training's `final_eval_predictions.jsonl` too)."""
        return {"checkpoint": checkpoint, "task": task, **self.to_dict()}
