"""A GRPO step's rollouts: of the sampler's batch, or drawn from a candidate pool (dynamic
sampling and difficulty order). Both decode `rollout_batch_size` questions at a time and hand
the loss micro-batches of `micro_batch_size`.

With plain GRPO a step rolls out the sampler's B questions, and on an easy or a hard task
most groups score all-right or all-wrong: zero advantage, no signal. Here a step draws a pool
of candidate questions (a pure function of (seed, step), like the plain batch), orders it by
the questions' estimated pass rates when difficulty-aware selection is on (`difficulty.py`),
and rolls it out round by round, every round many questions at once. With dynamic
sampling (DAPO) only informative groups (rewards not all equal) are kept, and the step stops
at B of them or after `max_rounds` rounds; without it the one round is kept whole.

Everything is decided on global quantities (the pool, the order, each round's outcomes
gathered from every rank), so the step is the same on any number of ranks and after a resume;
each rank rolls out its own contiguous share of each round, padded to equal work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lrt.data.samplers import shard
from lrt.distributed import gather_objects
from lrt.training.rollout import Rollout

if TYPE_CHECKING:
    from lrt.training.grpo import GRPOModule


def batch_rollouts(module: GRPOModule, batch: dict[str, torch.Tensor], step: int) -> list[Rollout]:
    """The step's rollouts of the sampler's own batch: decoded `rollout_batch_size` questions
    at a time, each rollout batch split into the micro-batches the loss passes take."""
    s = module.settings
    records = module.trainer.datamodule.train_records
    b = batch["input_ids"].shape[0]
    size = s.rollout_batch_size or b
    rollouts = []
    for i in range(0, b, size):
        c = slice(i, i + size)
        rollout = module.rollout(
            batch["input_ids"][c],
            batch["attention_mask"][c],
            [records[j] for j in batch["index"][c].tolist()],
            slots=batch["slot"][c],
            step=step,
        )
        rollouts += rollout.split(s.micro_batch_size, s.num_generations)
    for piece in rollouts:
        module.score_answers(piece)
    return rollouts


def pool_rollouts(module: GRPOModule, step: int) -> tuple[list[Rollout], dict[str, float]]:
    """The step's rollouts (chunks of rounds, masked to the kept groups) and what it cost:
    candidates rolled out, informative share, rounds used, groups kept."""
    s = module.settings
    trainer, g = module.trainer, s.num_generations
    data = trainer.datamodule
    rank, world = trainer.global_rank, trainer.world_size
    candidates = data.pool(step, s.pool_size)
    if module.pass_rates is not None:
        candidates = module.pass_rates.order(candidates, step)
    width = -(-s.round_size // world)
    size, micro = s.rollout_batch_size or width, s.micro_batch_size or width
    kept: set[int] = set()
    rollouts: list[Rollout] = []
    outcomes: list[tuple[int, int, bool, float]] = []
    rounds = 0
    for start in range(0, s.round_size * s.max_rounds, s.round_size):
        keyed = list(enumerate(candidates[start : start + s.round_size], start=start))
        if not keyed:
            break
        mine = shard(keyed, rank, world)
        # A rank one question short repeats one as padding, slot -1, which carries no loss.
        mine += [(-1, (mine or keyed)[-1][1])] * (width - len(mine))
        chunks = []  # (questions, rollout) per micro-batch: what the loss passes take
        for c in range(0, width, size):
            part = mine[c : c + size]
            batch = data.collate_keys([(q, slot) for slot, q in part])
            rollout = module.rollout(
                batch["input_ids"].to(module.lm.device),
                batch["attention_mask"].to(module.lm.device),
                [data.train_records[q] for _, q in part],
                slots=batch["slot"],
                step=step,
            )
            pieces = rollout.split(micro, g)
            chunks += [(part[i * micro : (i + 1) * micro], r) for i, r in enumerate(pieces)]
        rounds += 1
        local = [
            (slot, q, not zero, float(rate))
            for part, r in chunks
            for (slot, q), zero, rate in zip(
                part, r.zero_std.tolist(), r.correct.view(-1, g).float().mean(1), strict=True
            )
            if slot >= 0
        ]
        seen = sorted(x for share in gather_objects(local) for x in share)
        outcomes += seen
        for slot, _, informative, _ in seen:
            if not s.dynamic_sampling.enabled:
                kept.add(slot)
            elif informative and len(kept) < s.batch_size:
                kept.add(slot)
        chunks = [
            (part, r.keep_groups(torch.tensor([slot in kept for slot, _ in part]), g))
            for part, r in chunks
        ]
        if any(slot in kept for slot, *_ in seen):
            for _, r in chunks:
                module.score_answers(r)
            rollouts += [r for _, r in chunks]
        if s.dynamic_sampling.enabled and len(kept) >= s.batch_size:
            break
    if not rollouts:  # no informative group at all: a step with zero gradient
        rollouts = [chunks[-1][1]]
        module.score_answers(rollouts[0])
    if module.pass_rates is not None:
        module.pass_rates.update([q for _, q, _, _ in outcomes], [p for *_, p in outcomes], step)
    stats = {
        "pool/rolled_out": float(len(outcomes)),
        "pool/informative_share": sum(x[2] for x in outcomes) / max(len(outcomes), 1),
        "pool/rounds": float(rounds),
        "pool/kept_groups": float(len(kept)),
    }
    if module.pass_rates is not None:
        stats |= {f"difficulty/{k}": v for k, v in module.pass_rates.stats(step).items()}
    return rollouts, stats
