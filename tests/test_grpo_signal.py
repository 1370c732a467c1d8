"""Steps full of informative groups: dynamic sampling's rounds and filter, difficulty-aware
question order, and CoLaR's per-dimension latent log-density."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from lrt.backbone import BackboneConfig, load_backbone
from lrt.data.prompts import PromptConfig
from lrt.data.records import Record
from lrt.data.tasks import load_task
from lrt.decoding import Generation
from lrt.evaluation.predict import predict
from lrt.latent_lm import LatentLM, Prefix
from lrt.modes import DecodeConfig
from lrt.reasoner import build_reasoner
from lrt.training.difficulty import PassRates
from lrt.training.grpo_loss import gaussian_kl, gaussian_logprob, zero_std_groups
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


class FakeData:
    """A pool of 12 questions in a fixed order; question q's group is informative iff q is
    odd (one right and one wrong answer), else all wrong."""

    train_records = [Record(str(q), f"q{q}", "1") for q in range(12)]

    def pool(self, step: int, size: int) -> list[int]:
        return list(range(size))

    def collate_keys(self, keys: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        index = torch.tensor([q for q, _ in keys])
        return {
            "input_ids": index[:, None],
            "attention_mask": torch.ones(len(keys), 1),
            "slot": torch.tensor([s for _, s in keys]),
        }


def fake_module(settings: GRPOSettings, rates: PassRates | None = None) -> SimpleNamespace:
    rolled: list[list[int]] = []

    def rollout(input_ids, attention_mask, records, slots, step):
        qs = input_ids[:, 0].tolist()
        rolled.append(qs)
        correct = torch.tensor([[q % 2 == 1, False] for q in qs]).reshape(-1)
        n, b = len(qs) * G, len(qs)
        # Each sample's latent holds its question, so what a step keeps can be read back.
        latents = torch.tensor(qs, dtype=torch.float).repeat_interleave(G).view(n, 1, 1)
        prefix = Prefix(DynamicCache(), torch.ones(b, 1), torch.zeros(b, 1, 1), torch.zeros(b, 1))
        texts = [str(int(c)) for c in correct]
        generation = Generation([[1]] * n, texts, [1] * n, torch.zeros(n), [False] * n)
        return Rollout(
            prefix=prefix, latents=latents, noise=None, old_latent_logp=None,
            answer_ids=None, answer_mask=None, old_answer_logp=None, ref_answer_logp=None,
            drawn_answer_logp=None,
            rewards=correct.float(), correct=correct, advantages=torch.ones(n),
            mask=torch.ones(n, 3), zero_std=zero_std_groups(correct.float(), G),
            real=(slots >= 0).repeat_interleave(G), generation=generation,
            records=[r for r in records for _ in range(G)],
        )  # fmt: skip

    trainer = SimpleNamespace(datamodule=FakeData(), global_rank=0, world_size=1)
    return SimpleNamespace(
        settings=settings,
        trainer=trainer,
        lm=SimpleNamespace(device="cpu"),
        rollout=rollout,
        pass_rates=rates,
        rolled=rolled,
    )


def test_dynamic_sampling_keeps_the_first_b_informative_groups_and_stops() -> None:
    settings = GRPOSettings(
        batch_size=3,
        num_generations=G,
        dynamic_sampling=DynamicSamplingSettings(enabled=True, round_size=4, max_rounds=3),
    )
    module = fake_module(settings)
    rollouts, stats = pool_rollouts(module, step=0)
    # round 1 (questions 0-3) gives 1 and 3, round 2 (4-7) gives 5 and 7: stop at 3 kept
    assert module.rolled == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # The rollouts the loss sees hold only the kept groups (round 2's 7 is informative but
    # beyond B), every field narrowed alike, so the loss passes cost what the step trains on.
    for r, kept in zip(rollouts, [[1, 3], [5]], strict=True):
        assert r.latents.view(-1, G)[:, 0].tolist() == kept and bool(r.real.all())
        assert [rec.id for rec in r.records[::G]] == [str(q) for q in kept]
        assert r.generation.texts == ["1", "0"] * len(kept) and r.prefix.batch_size == len(kept)
        assert r.zero_std.tolist() == [False] * len(kept) and r.mask.shape == (len(kept) * G, 3)
    assert stats == {
        "pool/rolled_out": 8.0,
        "pool/informative_share": 0.5,
        "pool/rounds": 2.0,
        "pool/kept_groups": 3.0,
    }


def test_without_dynamic_sampling_the_round_is_kept_whole_in_difficulty_order() -> None:
    difficulty = DifficultySettings(enabled=True, pool_factor=3)
    settings = GRPOSettings(batch_size=2, num_generations=G, difficulty=difficulty)
    rates = PassRates(12, difficulty)
    rates.update([0, 1, 2, 3], [1.0, 0.0, 0.5, 0.0], step=0)
    module = fake_module(settings, rates)
    rollouts, stats = pool_rollouts(module, step=1)
    # pool 0..5: 2 is in between, then the unknown 4 and 5 before the saturated 0, 1, 3
    assert module.rolled == [[2, 4]] and bool(rollouts[0].real.all())
    assert stats["pool/kept_groups"] == 2.0 and stats["difficulty/known_share"] == 5 / 12
    assert float(rates.rate[2]) == 0.25 and float(rates.rate[4]) == 0.0  # updated from the step


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


def test_lrt_evaluated_with_latent_noise_samples_the_latents_reproducibly() -> None:
    """`pass_at_k.latent_noise` scores the policy latent GRPO trains: greedy answers from
    mu + sigma * eps, a different eps per sample and the same one on every call."""
    backbone = load_backbone(
        BackboneConfig(
            name="tiny-noise",
            source="random",
            random_config={
                "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "initializer_range": 0.1,
            },
        )
    )  # fmt: skip
    torch.manual_seed(0)
    reasoner = build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 1, "heads": 4},
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
    )
    lm = LatentLM(backbone, reasoner)
    records = load_task("arith", "test", limit=3)

    def answers(noise: float) -> list[list[str]]:
        settings = DecodeConfig(max_answer_tokens=6, latent_noise=noise)
        preds = predict(lm, "arith", records, PromptConfig(), "lrt", settings, samples=4)
        return [[p.text for p in preds if p.id == r.id] for r in records]

    noisy = answers(3.0)
    assert any(len(set(texts)) > 1 for texts in noisy)
    assert answers(3.0) == noisy
    assert all(len(set(texts)) == 1 for texts in answers(0.0))
