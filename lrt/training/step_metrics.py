"""GRPO's training metrics of a step, the same on any number of data-parallel ranks.

Each rank rolls out its own share of the global batch, and the shares differ in size: a global
batch of 3 is 2 + 1 questions on 2 ranks (the shorter share padded with a row that does not
count), and dynamic sampling keeps different numbers of groups on each rank. Rank 0's own mean
is therefore not the step's mean, and neither is the mean of the ranks' means. Every mean here
is a sum over all ranks divided by a count over all ranks, every maximum a maximum over ranks,
so a 2-rank run logs what one process logs on the same global batch. What is global already
(the loss, the learning rate, sigma, the pool's statistics decided from gathered outcomes) is
not reduced again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from lrt.training.rollout import Rollout

if TYPE_CHECKING:
    from lrt.training.base import StageModule


class LossStats:
    """The loss's statistics over a step's chunks and iterations.

    The loss reports each chunk's values as means over the chunk's counted tokens (`clip_frac`,
    `kl`) or as maxima (`*_max`); the means are kept as token-weighted sums, so the step's value
    is the mean over every counted token of every chunk, iteration and rank (a chunk with none,
    such as a rank's placeholder under dynamic sampling, weighs nothing).
    """

    def __init__(self) -> None:
        self.sums: dict[str, tuple[float, float]] = {}
        self.maxima: dict[str, float] = {}

    def add(self, stats: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
        """One chunk's `stats`, each a mean over its `tokens` counted tokens or a maximum."""
        n = float(tokens)
        for key, value in stats.items():
            if key.endswith("_max"):
                self.maxima[key] = max(self.maxima.get(key, 0.0), float(value))
            else:
                total, count = self.sums.get(key, (0.0, 0.0))
                self.sums[key] = (total + float(value) * n, count + n)


def step_metrics(
    module: StageModule, rollouts: list[Rollout], loss_stats: LossStats, group_size: int
) -> dict[str, float]:
    """Rewards, accuracy, zero-variance share and answer length over the real samples of
    `rollouts` on every rank, and the loss's statistics reduced likewise."""
    real = torch.cat([r.real for r in rollouts]).cpu()
    rewards = torch.cat([r.rewards for r in rollouts])[real].double()
    correct = torch.cat([r.correct for r in rollouts])[real].double()
    zero_std = torch.cat([r.zero_std for r in rollouts])[real[::group_size]].double()
    lengths = torch.tensor([n for r in rollouts for n in r.generation.num_generated])
    n = float(len(rewards))
    sums = {
        "reward_mean": (float(rewards.sum()), n),
        "reward_square": (float(rewards.square().sum()), n),
        "accuracy": (float(correct.sum()), n),
        "frac_zero_std": (float(zero_std.sum()), float(len(zero_std))),
        "answer_length": (float(lengths[real].sum()), n),
        **loss_stats.sums,
    }
    keys = sorted(sums)  # the same order on every rank
    reduced = module.all_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).cpu()
    totals = {k: (float(s), float(c)) for k, (s, c) in zip(keys, reduced, strict=True)}
    square, _ = totals.pop("reward_square")
    # A step that trains on no token (every group's rewards equal) clips none and has no KL;
    # a step without a single real sample has no reward to average.
    empty = {k: 0.0 if k in loss_stats.sums else math.nan for k in totals}
    metrics = {k: s / c if c else empty[k] for k, (s, c) in totals.items()}
    total, count = totals["reward_mean"]
    # The sample standard deviation (torch.std's) from the sum and the sum of squares.
    variance = max(square - total * total / count, 0.0) / (count - 1) if count > 1 else math.nan
    metrics["reward_std"] = math.sqrt(variance)
    if loss_stats.maxima:
        names = sorted(loss_stats.maxima)
        values = torch.tensor([loss_stats.maxima[k] for k in names], dtype=torch.float64)
        metrics |= dict(zip(names, module.all_max(values).tolist(), strict=True))
    return metrics
