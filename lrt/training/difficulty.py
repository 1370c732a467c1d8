"""Per-question pass-rate estimates from past rollouts, for balanced online difficulty filtering.

A GRPO group whose G rewards are all equal has zero advantage: it costs a rollout and teaches
nothing. Questions the reasoner always gets right or always gets wrong produce such groups,
so a step learns more from the questions whose pass rate is strictly between 0 and 1. The
estimate is an exponential moving average of each question's group pass rate; a question
saturated (G of G, or 0 of G) `patience` times running leaves the pool for `cooldown_steps`.
The state is plain tensors, saved in the Lightning checkpoint, so resume is exact; every rank
updates it from the gathered outcomes of every rank, so it is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lrt.training.settings import DifficultySettings

IN_BETWEEN, UNKNOWN, SATURATED, COOLING = range(4)
"""Preference order of a candidate: lower goes first."""


class PassRates:
    """Pass-rate estimate, saturation streak and cool-down end of every training question."""

    def __init__(self, n: int, settings: DifficultySettings) -> None:
        self.settings = settings
        self.rate = torch.full((n,), float("nan"), dtype=torch.float64)
        self.streak = torch.zeros(n, dtype=torch.long)
        self.until = torch.zeros(n, dtype=torch.long)

    def priority(self, question: int, step: int) -> int:
        if int(self.until[question]) > step:
            return COOLING
        rate = float(self.rate[question])
        if rate != rate:  # NaN: never rolled out
            return UNKNOWN
        return IN_BETWEEN if 0.0 < rate < 1.0 else SATURATED

    def order(self, candidates: Sequence[int], step: int) -> list[int]:
        """`candidates` by preference (stable: ties keep the sampler's seeded order). Cooling
        questions go last rather than nowhere, so a step never runs short of questions."""
        return sorted(candidates, key=lambda q: self.priority(q, step))

    def update(self, questions: Sequence[int], pass_rates: Sequence[float], step: int) -> None:
        """Fold each rolled-out question's group pass rate into its estimate, in order."""
        s = self.settings
        for q, p in zip(questions, pass_rates, strict=True):
            old = float(self.rate[q])
            self.rate[q] = p if old != old else (1 - s.ema) * old + s.ema * p
            saturated = p in (0.0, 1.0)
            self.streak[q] = int(self.streak[q]) + 1 if saturated else 0
            if int(self.streak[q]) >= s.patience:
                self.until[q] = step + 1 + s.cooldown_steps
                self.streak[q] = 0

    def stats(self, step: int) -> dict[str, float]:
        """Shares of the training set: estimated, strictly in between, cooling down."""
        known = ~torch.isnan(self.rate)
        between = known & (self.rate > 0) & (self.rate < 1)
        n = max(len(self.rate), 1)
        return {
            "known_share": float(known.sum()) / n,
            "in_between_share": float(between.sum()) / n,
            "cooling_share": float((self.until > step).sum()) / n,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "rate": self.rate.clone(),
            "streak": self.streak.clone(),
            "until": self.until.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rate, self.streak, self.until = state["rate"], state["streak"], state["until"]
