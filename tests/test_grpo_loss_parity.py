"""GRPO's loss types against TRL's own `GRPOTrainer._compute_loss` on the same tensors.

TRL's trainer is not built (that needs a model, datasets and an accelerator): an instance made
with `GRPOTrainer.__new__` carries only the attributes `_compute_loss` reads, and its
`_get_per_token_logps_and_entropies` returns the chosen per-token log-probs. Over R ranks of M
micro-batches TRL's objective is the mean over ranks (DDP's gradient average) of the sum over
micro-batches (gradient accumulation) of `_compute_loss`; ours is the sum of `policy_loss_sum`
over every chunk divided by the summed `loss_units`, as `GRPOModule.training_step` and
`StageModule.optimizer_step_on` take it.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from lrt.training.grpo_loss import LOSS_TYPES, k3_kl, loss_units, policy_loss_sum

N, T, MAX_LEN = 16, 6, 8
"""Samples, padded completion width and TRL's `max_completion_length` (the rollout budget)."""
EPS_LOW, EPS_HIGH = 0.2, 0.28
TRUNCATED = [0, 1, 2, 3, 9]
"""Samples that ran to the budget without EOS: the first micro-batch of the sharded layout
holds nothing else, so under `mask_truncated_completions` it has no loss token at all."""


def tensors() -> dict[str, torch.Tensor]:
    """Per-token log-probs whose ratios to the old ones fall on both sides of the clip range,
    advantages of both signs (and zeros), completions of different lengths."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    lengths[TRUNCATED] = T
    mask = (torch.arange(T) < lengths[:, None]).long()
    old = -3 * torch.rand(N, T, generator=gen)
    return {
        "mask": mask,
        "logp": old + 0.6 * torch.randn(N, T, generator=gen),
        "old": old,
        "ref": old + 0.3 * torch.randn(N, T, generator=gen),
        "advantages": torch.randn(N, generator=gen) * (torch.arange(N) % 5 != 4),
    }


def trl_stand_in(loss_type: str, beta: float, ranks: int, micro: int) -> GRPOTrainer:
    """A `GRPOTrainer` with just what `_compute_loss` reads (TRL's default token-level ratio,
    no entropy mask, no off-policy mask, no vLLM correction, no entropy bonus)."""
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.epsilon_low, trainer.epsilon_high = EPS_LOW, EPS_HIGH
    trainer.importance_sampling_level = "token"
    trainer.top_entropy_quantile = 1.0
    trainer.off_policy_mask_threshold = None
    trainer.aux_loss_enabled = False
    trainer._entropy_bonus_enabled = False
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = False
    trainer.max_completion_length = MAX_LEN
    trainer.current_gradient_accumulation_steps = micro
    trainer.args = SimpleNamespace(
        use_bias_correction_kl=False, delta=None, steps_per_generation=micro
    )
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(
        num_processes=ranks, reduce=lambda x, reduction: x, gather=lambda x: x
    )
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return trainer


def trl_loss(
    loss_type: str, beta: float, mask_truncated: bool, ranks: int, micro: int, t: dict
) -> torch.Tensor:
    """TRL's objective over `ranks` x `micro` contiguous micro-batches of the samples."""
    trainer = trl_stand_in(loss_type, beta, ranks, micro)
    mask = t["mask"]
    if mask_truncated:  # trl/trainer/grpo_trainer.py (1.16.0) lines 2488-2492
        is_truncated = torch.zeros(N, dtype=torch.bool)
        is_truncated[TRUNCATED] = True
        mask = mask * (~is_truncated).unsqueeze(1).int()
    num_items_in_batch = mask.sum()  # line 2498: gathered over every process
    total = torch.zeros(())
    for rows in torch.arange(N).chunk(ranks * micro):
        logp = t["logp"][rows]
        trainer._get_per_token_logps_and_entropies = lambda *a, logp=logp, **k: (
            logp,
            torch.zeros_like(logp),
            None,
        )
        inputs = {
            "prompt_ids": torch.zeros(len(rows), 1, dtype=torch.long),
            "prompt_mask": torch.ones(len(rows), 1, dtype=torch.long),
            "completion_ids": torch.zeros(len(rows), T, dtype=torch.long),
            "completion_mask": mask[rows],
            "advantages": t["advantages"][rows],
            "old_per_token_logps": t["old"][rows],
            "ref_per_token_logps": t["ref"][rows],
            "num_items_in_batch": num_items_in_batch,
        }
        total = total + trainer._compute_loss(None, inputs)
    return total / ranks


def our_loss(
    loss_type: str, beta: float, mask_truncated: bool, ranks: int, micro: int, t: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours: each chunk's `policy_loss_sum` over the global sum of `loss_units`; and the
    fraction of counted tokens where clipping is active."""
    keep = torch.ones(N, dtype=torch.bool)
    if mask_truncated:
        keep[TRUNCATED] = False
    mask = t["mask"] * keep[:, None]
    real = torch.ones(N, dtype=torch.bool)
    total, units, clipped = torch.zeros(()), torch.zeros(()), torch.zeros(())
    for rows in torch.arange(N).chunk(ranks * micro):
        logp = t["logp"][rows]
        part, clip_frac = policy_loss_sum(
            logp,
            t["old"][rows],
            t["advantages"][rows],
            loss_type,
            EPS_LOW,
            EPS_HIGH,
            kl=k3_kl(logp, t["ref"][rows]),
            beta=beta,
            mask=mask[rows],
        )
        total = total + part
        units = units + loss_units(loss_type, mask[rows], MAX_LEN, real[rows])
        clipped = clipped + clip_frac * mask[rows].sum()
    return total / units.clamp(min=1), clipped / mask.sum()


@pytest.mark.parametrize("layout", [(1, 1), (2, 2)], ids=["one-batch", "2ranks-x-2micro"])
@pytest.mark.parametrize("beta", [0.0, 0.04], ids=["no-kl", "kl"])
@pytest.mark.parametrize("mask_truncated", [False, True], ids=["all", "mask-truncated"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_gradient_match_trl(
    loss_type: str, mask_truncated: bool, beta: float, layout: tuple[int, int]
) -> None:
    """Same loss to 1e-6 and the same gradient in the per-token log-probs, with clipping active
    on both sides, for one micro-batch and for 2 ranks of 2 micro-batches of unequal token
    counts (where `bnpo`, `dapo` and `grpo` part ways)."""
    ranks, micro = layout
    t = tensors()
    t["logp"].requires_grad_()
    theirs = trl_loss(loss_type, beta, mask_truncated, ranks, micro, t)
    (their_grad,) = torch.autograd.grad(theirs, t["logp"])
    ours, clip_frac = our_loss(loss_type, beta, mask_truncated, ranks, micro, t)
    (our_grad,) = torch.autograd.grad(ours, t["logp"])
    assert abs(float(ours.detach()) - float(theirs.detach())) <= 1e-6
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-7)
    assert their_grad.abs().sum() > 0
    assert 0 < float(clip_frac) < 1


def test_clip_fraction_matches_trls_metric() -> None:
    """`clip_frac` is TRL's `clip_ratio/region_mean`: the share of counted tokens whose ratio
    is clipped on the side that binds for the advantage's sign."""
    t = tensors()
    trainer = trl_stand_in("grpo", 0.0, 1, 1)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (
        t["logp"],
        torch.zeros_like(t["logp"]),
        None,
    )
    inputs = {
        "prompt_ids": torch.zeros(N, 1, dtype=torch.long),
        "prompt_mask": torch.ones(N, 1, dtype=torch.long),
        "completion_ids": torch.zeros(N, T, dtype=torch.long),
        "completion_mask": t["mask"],
        "advantages": t["advantages"],
        "old_per_token_logps": t["old"],
    }
    trainer._compute_loss(None, inputs)
    _, clip_frac = policy_loss_sum(
        t["logp"], t["old"], t["advantages"], "grpo", EPS_LOW, EPS_HIGH, mask=t["mask"]
    )
    (region,) = trainer._metrics["train"]["clip_ratio/region_mean"]
    assert float(clip_frac) == pytest.approx(region, abs=1e-7)
    assert 0 < region < 1
