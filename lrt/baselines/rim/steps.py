"""What is read out after each memory block: a solution step (grounding) or the answer.

Grounding needs the explicit steps of each solution; they come from the task's records
(`Record.steps`: `arith` solutions, GSM8K's `<<...>>` calculator annotations, GSM8K-Aug's
`cot`), parsed when the data loads, so a malformed annotation fails there with its file and
line. A solution has one block per step; past K blocks its remaining steps are read out
together after the K-th, so no step is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from lrt.data.records import Record
from lrt.errors import DataError


def require_steps(records: Sequence[Record], where: str) -> None:
    """Refuse, before training, records of a task that states no steps."""
    for record in records:
        if record.steps is None:
            raise DataError(
                f"{where}: record {record.id!r} has no reasoning steps; stage.phase=grounding "
                "needs a task that states them (arith, gsm8k, gsm8k_aug)"
            )


def step_texts(record: Record, num_blocks: int) -> list[str]:
    """One readout text per block for grounding: the record's steps, the K-th holding the rest."""
    steps = list(record.steps or ())
    if len(steps) > num_blocks:
        steps = steps[: num_blocks - 1] + [" ".join(steps[num_blocks - 1 :])]
    return steps


def block_weights(num_blocks: int, weighting: str) -> list[float]:
    """Refinement's weight of the answer after block k (1-based), mean 1: `linear` grows as
    k (later blocks have had more memory to refine in), `uniform` is 1 for every block."""
    if weighting == "uniform":
        return [1.0] * num_blocks
    return [2.0 * k / (num_blocks + 1) for k in range(1, num_blocks + 1)]
