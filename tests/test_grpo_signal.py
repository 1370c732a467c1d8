"""Steps full of informative groups: dynamic sampling's rounds and filter, difficulty-aware
question order, and CoLaR's per-dimension latent log-density."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from conftest import latent_lm
from transformers import PreTrainedTokenizerBase

from lrt.backbone import Backbone, BackboneConfig, load_backbone
from lrt.data.datamodule import Collator, PromptDataset
from lrt.data.prompts import PromptConfig
from lrt.data.records import Record
from lrt.data.tasks import load_task
from lrt.evaluation.predict import predict
from lrt.modes import DecodeConfig
from lrt.training.difficulty import PassRates
from lrt.training.grpo import GRPOModule
from lrt.training.grpo_loss import gaussian_kl, gaussian_logprob
from lrt.training.policies import LatentGaussianPolicy
from lrt.training.pool import pool_rollouts
from lrt.training.rollout import Rollout
from lrt.training.settings import DifficultySettings, DynamicSamplingSettings, GRPOSettings

G = 2


def test_pass_rates_order_update_and_cooldown() -> None:
    rates = PassRates(5, DifficultySettings(enabled=True, ema=0.5, patience=2, cooldown_steps=3))
    rates.update([0, 1, 2], [0.5, 1.0, 0.0], step=0)
    # 0 is in between, 3 and 4 unknown, 1 and 2 saturated once (not yet cooling)
    assert rates.order([4, 2, 1, 3, 0], step=1) == [0, 4, 3, 2, 1]
    rates.update([0, 1], [1.0, 1.0], step=1)
    assert float(rates.rate[0]) == pytest.approx(0.75)  # EMA: 0.5 * 0.5 + 0.5 * 1.0
    # 1 saturated twice running: out of the pool for 3 steps after this one, then back
    assert rates.order([1, 2], step=2) == [2, 1] and rates.priority(1, 4) == 3
    assert rates.priority(1, 5) == 2
    restored = PassRates(5, rates.settings)
    restored.load_state_dict(rates.state_dict())
    assert restored.order([4, 2, 1, 3, 0], 2) == rates.order([4, 2, 1, 3, 0], 2)
    assert rates.stats(2) == {"known_share": 0.6, "in_between_share": 0.2, "cooling_share": 0.2}


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    """A tiny random base whose greedy answers depend on the latents."""
    return load_backbone(
        BackboneConfig(
            name="tiny-signal",
            source="random",
            random_config={
                "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "initializer_range": 0.1,
            },
        )
    )  # fmt: skip


class PoolData:
    """12 questions, the pool in their order, collated by the training loader's own
    `PromptDataset` and `Collator`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.train_records = [Record(str(q), f"What is {q} + 1?", str(q + 1)) for q in range(12)]
        self.dataset = PromptDataset(self.train_records, tokenizer, PromptConfig(), None)
        self.collate = Collator(tokenizer)

    def pool(self, step: int, size: int) -> list[int]:
        return list(range(size))

    def collate_keys(self, keys: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        return self.collate([self.dataset[k] for k in keys])


def pool_module(
    backbone: Backbone, settings: GRPOSettings, monkeypatch: pytest.MonkeyPatch
) -> tuple[GRPOModule, list[list[int]]]:
    """A real GRPO module (latent exploration, greedy answers) on `PoolData`, and the questions
    each of its rollouts was given. Only the grader is replaced: question q's group is
    informative iff q is odd (its first sample right, its second wrong), else all wrong; a
    rollout grades its rows in order, a question's G samples consecutive."""
    module = GRPOModule(latent_lm(backbone), "arith", settings)
    data = PoolData(module.lm.tokenizer)
    module.trainer = SimpleNamespace(datamodule=data, global_rank=0, world_size=1)
    calls = itertools.count()

    def grade(task: str, text: str, record: Record) -> bool:
        first = next(calls) % G == 0
        return int(record.id) % 2 == 1 and first

    monkeypatch.setattr("lrt.training.grpo.grade", grade)
    rolled: list[list[int]] = []
    real_rollout = module.rollout

    def rollout(input_ids, attention_mask, records, slots, step) -> Rollout:
        rolled.append([int(r.id) for r in records])
        return real_rollout(input_ids, attention_mask, records, slots=slots, step=step)

    monkeypatch.setattr(module, "rollout", rollout)
    return module, rolled


def test_dynamic_sampling_keeps_the_first_b_informative_groups_and_stops(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = GRPOSettings(
        batch_size=3,
        num_generations=G,
        max_answer_tokens=2,
        dynamic_sampling=DynamicSamplingSettings(enabled=True, round_size=4, max_rounds=3),
    )
    module, rolled = pool_module(backbone, settings, monkeypatch)
    rollouts, stats = pool_rollouts(module, step=5)
    # round 1 (questions 0-3) gives 1 and 3, round 2 (4-7) gives 5 and 7: stop at 3 kept
    assert rolled == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # The rollouts the loss sees hold only the kept groups (round 2's 7 is informative but
    # beyond B), every field narrowed alike: each kept group is the one its question rolls
    # out alone at its slot, so the loss passes cost what the step trains on.
    for r, kept in zip(rollouts, [[1, 3], [5]], strict=True):
        assert [rec.id for rec in r.records[::G]] == [str(q) for q in kept]
        assert r.correct.tolist() == [True, False] * len(kept) and bool(r.real.all())
        assert r.zero_std.tolist() == [False] * len(kept) and r.prefix.batch_size == len(kept)
        assert r.mask.shape == (len(kept) * G, 2) and bool(r.mask.all())
        for i, q in enumerate(kept):
            batch = module.trainer.datamodule.collate_keys([(q, q)])
            alone = module.rollout(batch["input_ids"], batch["attention_mask"],
                                   [module.trainer.datamodule.train_records[q]],
                                   slots=batch["slot"], step=5)  # fmt: skip
            rows = slice(i * G, (i + 1) * G)
            torch.testing.assert_close(r.latents[rows], alone.latents)
            torch.testing.assert_close(r.old_latent_logp[rows], alone.old_latent_logp)
            torch.testing.assert_close(r.advantages[rows], alone.advantages)
            assert r.generation.token_ids[rows] == alone.generation.token_ids
    assert stats == {
        "pool/rolled_out": 8.0,
        "pool/informative_share": 0.5,
        "pool/rounds": 2.0,
        "pool/kept_groups": 3.0,
    }


def test_without_dynamic_sampling_the_round_is_kept_whole_in_difficulty_order(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    difficulty = DifficultySettings(enabled=True, pool_factor=3)
    settings = GRPOSettings(
        batch_size=2, num_generations=G, max_answer_tokens=2, difficulty=difficulty
    )
    module, rolled = pool_module(backbone, settings, monkeypatch)
    rates = PassRates(12, difficulty)
    rates.update([0, 1, 2, 3], [1.0, 0.0, 0.5, 0.0], step=0)
    module._pass_rate_state = rates.state_dict()  # as a resumed run's checkpoint holds it
    rollouts, stats = pool_rollouts(module, step=1)
    # pool 0..5: 2 is in between, then the unknown 4 and 5 before the saturated 0, 1, 3
    assert rolled == [[2, 4]] and bool(rollouts[0].real.all())
    assert [rec.id for rec in rollouts[0].records[::G]] == ["2", "4"]
    assert stats["pool/kept_groups"] == 2.0 and stats["difficulty/known_share"] == 5 / 12
    updated = module.pass_rates
    assert updated is not None  # updated from the step's all-wrong groups of 2 and 4
    assert float(updated.rate[2]) == 0.25 and float(updated.rate[4]) == 0.0


def test_latent_logprob_mean_divides_density_and_kl_by_d() -> None:
    torch.manual_seed(0)
    mu, ref = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    sigma = torch.tensor(0.7)
    z = mu.repeat_interleave(G, 0) + 0.3

    def policy(kind: str) -> LatentGaussianPolicy:
        return LatentGaussianPolicy(lambda: sigma, 0.5, 0, G, kind)

    mean, total = (
        policy("mean").terms(z, z[..., 0], mu, ref),
        policy("sum").terms(z, z[..., 0], mu, ref),
    )
    torch.testing.assert_close(mean.logp, total.logp / 8)
    torch.testing.assert_close(mean.kl, total.kl / 8)
    torch.testing.assert_close(total.logp, gaussian_logprob(z, mu.repeat_interleave(G, 0), sigma))
    torch.testing.assert_close(
        total.kl, gaussian_kl(mu, sigma, ref, torch.tensor(0.5)).repeat_interleave(G, 0)
    )
    with pytest.raises(Exception, match="stage.latent_logprob=max is not one of"):
        GRPOSettings(latent_logprob="max")


def test_lrt_evaluated_with_latent_noise_samples_the_latents_reproducibly(
    backbone: Backbone,
) -> None:
    """`pass_at_k.latent_noise` scores the policy latent GRPO trains: greedy answers from
    mu + sigma * eps, a different eps per sample and the same one on every call."""
    lm = latent_lm(backbone, num_latents=4)
    records = load_task("arith", "test", limit=3)

    def answers(noise: float) -> list[list[str]]:
        settings = DecodeConfig(max_answer_tokens=6, latent_noise=noise)
        preds = predict(lm, "arith", records, PromptConfig(), "lrt", settings, samples=4)
        return [[p.text for p in preds if p.id == r.id] for r in records]

    noisy = answers(3.0)
    assert any(len(set(texts)) > 1 for texts in noisy)
    assert answers(3.0) == noisy
    assert all(len(set(texts)) == 1 for texts in answers(0.0))


def test_dynamic_sampling_decodes_rounds_whole_and_backpropagates_micro_batches(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With micro_batch_size 1 a round's 4 questions are decoded in one call, yet the loss
    gets one chunk per question (a placeholder where none is kept, as every rank needs the
    same passes), equal to decoding each question alone (rollout_batch_size 1)."""
    steps = []
    for rollout_batch_size in (None, 1):
        settings = GRPOSettings(
            batch_size=3,
            num_generations=G,
            max_answer_tokens=2,
            micro_batch_size=1,
            rollout_batch_size=rollout_batch_size,
            dynamic_sampling=DynamicSamplingSettings(enabled=True, round_size=4, max_rounds=3),
        )
        module, rolled = pool_module(backbone, settings, monkeypatch)
        rollouts, stats = pool_rollouts(module, step=5)
        loss = sum(module.loss_sum(r)[0] for r in rollouts) / sum(
            float(module.loss_units(r)) for r in rollouts
        )
        steps.append((rolled, rollouts, stats, loss))
    (rolled, together, stats, loss), (rolled_alone, alone, stats_alone, loss_alone) = steps
    assert rolled == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert rolled_alone == [[q] for q in range(8)] and stats == stats_alone
    assert [bool(r.real.any()) for r in together] == [False, True, False, True] + [
        False, True, False, False  # 7 is informative but beyond B=3
    ]  # fmt: skip
    for r, a in zip(together, alone, strict=True):
        assert r.prefix.batch_size == 1 and r.generation.token_ids == a.generation.token_ids
        assert torch.equal(r.advantages, a.advantages) and torch.equal(r.mask, a.mask)
        torch.testing.assert_close(r.latents, a.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, loss_alone, atol=1e-5, rtol=1e-5)
