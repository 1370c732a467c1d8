"""The online rule of STIR, apart from decoding: hooks that read and steer a decoder layer's
output, Retrieve (cosine top-k at control point m-1, anchor gating) and Commit (the best of
the null option and the previewed corrections).

States and injections are both at the output of decoder layer l (0-based), the full residual
stream: transformers' `hidden_states[l + 1]`, EasySteer's `hidden + residual`. A vector is
added at the last position of a forward only: one impulse at the last prefill position.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lrt.baselines.stir.library import Library
    from lrt.baselines.stir.settings import OnlineSettings

TIE = 1e-12
"""A candidate must beat the null option by more than this (ties go to null)."""


@contextmanager
def layer_outputs(layers: nn.ModuleList, indices: Sequence[int]) -> Iterator[dict[int, Any]]:
    """The output of each decoder layer in `indices` at the last position of a forward
    ([B, d] float32 per layer, filled when the forward runs)."""
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int) -> Any:
        def keep(_module: nn.Module, _inputs: object, output: Any) -> None:
            states = output[0] if isinstance(output, tuple) else output
            captured[index] = states[:, -1].float()

        return keep

    handles = [layers[i].register_forward_hook(hook(i)) for i in indices]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def inject(layers: nn.ModuleList, deltas: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Add `deltas[l]` ([B, d], one vector per row) to decoder layer l's output at the last
    position of every forward inside the block, through a forward hook on that layer."""

    def hook(delta: torch.Tensor) -> Any:
        def add(_module: nn.Module, _inputs: object, output: Any) -> Any:
            states = output[0] if isinstance(output, tuple) else output
            steered = states.clone()
            steered[:, -1] += delta.to(device=states.device, dtype=states.dtype)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return add

    handles = [layers[layer].register_forward_hook(hook(d)) for layer, d in deltas.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Retrieved:
    """What Retrieve found for one prefix: the corrections worth previewing and the null value."""

    candidates: list[int]
    """Library rows of up to L corrections among the top-k, by (value, similarity, quality)."""
    values: list[float]
    """Their value A = similarity x quality."""
    null_value: float
    """max(0, the best anchor's A among the top-k): what doing nothing is worth."""


def retrieve(
    library: Library,
    queries: Mapping[int, torch.Tensor],
    control_point: int,
    online: OnlineSettings,
) -> Retrieved | None:
    """Top-k entries of `control_point` by cosine between their key and the query at their own
    layer (anchors and corrections ranked together); None when that control point has fewer
    than `min_entries` entries or the best similarity is below `min_sim` (no steering for this
    segment only)."""
    rows = (library.control_point == control_point).nonzero().flatten()
    if len(rows) < online.min_entries:
        return None
    sims = torch.empty(len(rows))
    for layer in library.layer[rows].unique().tolist():
        at = library.layer[rows] == layer
        query = torch.nn.functional.normalize(queries[layer].float(), dim=0).to(library.keys)
        sims[at] = (library.keys[rows[at]] @ query).float().cpu()
    order = sorted(range(len(rows)), key=lambda j: -float(sims[j]))[: online.k_retrieve]
    if float(sims[order[0]]) < online.min_sim:
        return None
    null_value, found = 0.0, []
    for j in order:
        row, sim = int(rows[j]), float(sims[j])
        quality = float(library.quality[row])
        if bool(library.anchor[row]):
            null_value = max(null_value, sim * quality)
        else:
            found.append((sim * quality, sim, quality, row))
    found.sort(key=lambda c: (-c[0], -c[1], -c[2]))
    found = found[: online.num_candidates]
    return Retrieved([c[3] for c in found], [c[0] for c in found], null_value)


def commit(
    retrieved: Retrieved, gains: Sequence[float] | None, online: OnlineSettings
) -> tuple[int | None, float]:
    """(library row, injection scale) of the best option, or (None, 0) for null.

    Score = beta A + rho gain (gain: the candidate's probe confidence minus the null probe's;
    without preview, beta A); null scores beta x null value and wins ties; a best score below
    tau_null, or a scale k_scale x score that is not positive, commits nothing.
    """
    null_score = online.beta * retrieved.null_value
    best, best_score = None, null_score
    for j, (row, value) in enumerate(zip(retrieved.candidates, retrieved.values, strict=True)):
        score = online.beta * value + (online.rho * gains[j] if gains is not None else 0.0)
        if score > best_score:
            best, best_score = row, score
    if best is None or abs(best_score - null_score) <= TIE or best_score < online.tau_null:
        return None, 0.0
    scale = online.k_scale * best_score
    return (best, scale) if scale > 0 else (None, 0.0)
