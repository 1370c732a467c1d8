"""Stage II: a sparse, diverse library by greedy quality-weighted DPP (STIR's stage2.py).

Greedy maximisation of sum log(1 + q_i) + lambda log det(K_S + eps I) over unit keys
(K = H H^T): each step adds the entry maximising log(1 + q_i) + lambda log s_i, where s_i is
the Schur complement K_ii + eps - |L^-1 k_S,i|^2 of an incremental Cholesky factor L of the
selected set, so a step costs one triangular solve per candidate instead of a determinant.
"""

from __future__ import annotations

import torch

MIN_SCHUR = 1e-12
"""Candidates whose Schur complement is not above this are skipped (numerically dependent)."""


def greedy_dpp(
    keys: torch.Tensor, quality: torch.Tensor, budget: int, diversity: float, epsilon: float
) -> list[int]:
    """Indices of up to `budget` rows of `keys` (unit rows), in the order greedy picks them;
    ties go to the lower index."""
    h = keys.double()
    kernel = h @ h.T
    diag = kernel.diagonal() + epsilon
    value = torch.log1p(quality.double().clamp(min=0))
    chosen: list[int] = []
    factor = torch.zeros(0, 0, dtype=torch.float64)
    while len(chosen) < min(budget, len(h)):
        rest = [i for i in range(len(h)) if i not in chosen]
        if chosen:
            cross = kernel[chosen][:, rest]  # [|S|, rest]
            y = torch.linalg.solve_triangular(factor, cross, upper=False)
            schur = diag[rest] - (y * y).sum(0)
        else:
            y = None
            schur = diag[rest]
        ok = torch.isfinite(schur) & (schur > MIN_SCHUR)
        if not bool(ok.any()):
            break
        gain = value[rest] + diversity * torch.log(schur.clamp(min=MIN_SCHUR))
        gain = torch.where(ok, gain, torch.tensor(-torch.inf, dtype=gain.dtype))
        best = int(torch.argmax(gain))  # the first maximum: the lower index on ties
        pick, s = rest[best], float(schur[best])
        n = len(chosen)
        grown = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        grown[:n, :n] = factor
        if y is not None:
            grown[n, :n] = y[:, best]
        grown[n, n] = s**0.5
        factor = grown
        chosen.append(pick)
    return chosen


def select_entries(
    keys: torch.Tensor,
    quality: torch.Tensor,
    control_point: torch.Tensor,
    budget: int,
    diversity: float,
    epsilon: float,
    forced_per_control_point: int,
) -> list[int]:
    """The library's rows: the top `forced_per_control_point` entries by quality of every
    control point first (stable, so a pair's correction comes before its anchor), then the
    greedy DPP over the others for the rest of `budget`.

    As in STIR's code, the DPP runs on the remaining entries alone (diversity with the forced
    ones is not counted), and forced entries count toward the budget.
    """
    forced: list[int] = []
    for m in sorted(set(control_point.tolist())):
        rows = [i for i in range(len(keys)) if int(control_point[i]) == m]
        rows.sort(key=lambda i: -float(quality[i]))
        forced += rows[: max(0, min(forced_per_control_point, budget - len(forced)))]
    rest = [i for i in range(len(keys)) if i not in set(forced)]
    if not rest or budget <= len(forced):
        return forced
    picked = greedy_dpp(keys[rest], quality[rest], budget - len(forced), diversity, epsilon)
    return forced + [rest[i] for i in picked]
