"""GRPO: the loss against its formulas, REINFORCE at one iteration, batched rollouts, the KL,
learned sigma, resumable noise; answer-token exploration (the paper's) against a direct
transcription of its gradient; and `train.py stage=grpo` end to end."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import run_entry
from omegaconf import OmegaConf
from torch.distributions import Normal, kl_divergence

from lrt.backbone import Backbone, BackboneConfig, load_backbone
from lrt.data.records import Record
from lrt.errors import CheckpointError, ConfigError
from lrt.lm.latent_lm import LatentLM
from lrt.reasoner import build_reasoner, load_reasoner
from lrt.schema import typed
from lrt.training.grpo import GRPOModule
from lrt.training.grpo_loss import (
    LOSS_TYPES,
    gaussian_kl,
    gaussian_logprob,
    group_advantages,
    policy_loss,
    zero_std_groups,
)
from lrt.training.optim import OptimConfig
from lrt.training.pool import batch_rollouts
from lrt.training.rollout import Rollout
from lrt.training.settings import GRPOSettings

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [
    Record("a", "Start with 4. Add 13. What is the result?", "17"),
    Record("b", "What is 7?", "7"),
]
G = 4


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    """A tiny random base whose greedy answers depend on the latents (the shared tiny model,
    with its 0.02 init, answers every latent with the same repeated token)."""
    return load_backbone(
        BackboneConfig(
            name="tiny-grpo",
            source="random",
            random_config={
                "model_type": "qwen3",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "initializer_range": 0.1,
            },
        )
    )


def make_module(backbone: Backbone, dropout: float = 0.0, **settings) -> GRPOModule:
    torch.manual_seed(0)
    reasoner = build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 1, "heads": 4, "dropout": dropout},
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
    )
    defaults = {"num_generations": G, "max_answer_tokens": 6, "optim": OptimConfig(lr=1e-2)}
    config = GRPOSettings(max_steps=10, **{**defaults, **settings})
    return GRPOModule(LatentLM(backbone, reasoner), "arith", config)


def prompts(lm: LatentLM) -> list[str]:
    return [
        lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": r.question}], tokenize=False, add_generation_prompt=True
        )
        for r in RECORDS
    ]


def rollout(module: GRPOModule):
    """A scored rollout of `RECORDS`, as the training step's pieces are."""
    ro = module.rollout(*module.lm.tokenize_prompts(prompts(module.lm)), RECORDS)
    module.score_answers(ro)
    return ro


# --- pure functions ----------------------------------------------------------------------------


def test_group_advantages() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.1, 1.1, 1.1, 1.1])
    centred = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    torch.testing.assert_close(
        group_advantages(rewards, 4), centred / torch.tensor([std + 1e-4] * 4 + [1.0] * 4)
    )
    torch.testing.assert_close(group_advantages(rewards, 4, scale_rewards=False), centred)
    # All-equal groups get exactly zero, even where float rounding would leave a residue.
    assert (group_advantages(rewards, 4)[4:] == 0).all()
    assert zero_std_groups(rewards, 4).tolist() == [False, True]


def test_gaussian_logprob_and_kl_match_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    z, mu, mu_ref = (torch.randn(3, 2, 5, generator=gen) for _ in range(3))
    sigma = torch.tensor(0.7)
    torch.testing.assert_close(
        gaussian_logprob(z, mu, sigma), Normal(mu, sigma).log_prob(z).sum(-1)
    )
    torch.testing.assert_close(
        gaussian_kl(mu, sigma, mu_ref, sigma),
        kl_divergence(Normal(mu, sigma), Normal(mu_ref, sigma)).sum(-1),
    )
    # A learned sigma is penalised against the reference's: the full Gaussian KL, whose mean
    # term is scaled by the reference variance (a larger sigma cannot lower it).
    sigma_ref = torch.tensor(0.4)
    torch.testing.assert_close(
        gaussian_kl(mu, sigma, mu_ref, sigma_ref),
        kl_divergence(Normal(mu, sigma), Normal(mu_ref, sigma_ref)).sum(-1),
    )
    torch.testing.assert_close(
        gaussian_kl(mu, sigma, mu_ref, sigma), (mu - mu_ref).pow(2).sum(-1) / (2 * 0.7**2)
    )


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_policy_loss_equals_its_formula(loss_type: str) -> None:
    """Each loss type against a loop-by-loop transcription of TRL's definition."""
    gen = torch.Generator().manual_seed(1)
    n, k, lo, hi, beta = 4, 3, 0.2, 0.3, 0.05
    logp = torch.randn(n, k, generator=gen)
    old = logp + 0.5 * torch.randn(n, k, generator=gen)  # ratios on both sides of the clip
    adv = torch.tensor([1.5, -0.7, 0.0, -2.0])
    kl = torch.rand(n, k, generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    loss, clip_frac = policy_loss(logp, old, adv, loss_type, lo, hi, kl=kl, beta=beta, mask=mask)

    per, active = torch.zeros(n, k), 0
    for i in range(n):
        for t in range(k):
            rho = math.exp(logp[i, t] - old[i, t])
            a = float(adv[i])
            per[i, t] = -min(rho * a, min(max(rho, 1 - lo), 1 + hi) * a) + beta * kl[i, t]
            active += bool(mask[i, t]) and ((rho < 1 - lo and a < 0) or (rho > 1 + hi and a > 0))
    per = per * mask
    expected = {
        "grpo": sum(per[i].sum() / mask[i].sum() for i in range(n)) / n,
        "bnpo": per.sum() / mask.sum(),
        "dapo": per.sum() / mask.sum(),
        "dr_grpo": per.sum() / (n * k),
    }[loss_type]
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(clip_frac, torch.tensor(active / mask.sum().item()))
    assert 0 < active < mask.sum()


def test_unknown_loss_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="stage.loss_type='ppo'"):
        policy_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2), loss_type="ppo")
    with pytest.raises(ConfigError, match="stage.loss_type"):
        GRPOSettings(loss_type="ppo")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_one_iteration_gradient_is_reinforce_with_group_baseline(loss_type: str) -> None:
    """d loss / d mu = -sum_i w_ik A_i (z_i - mu) / sigma^2, w the loss type's token weight;
    the second question's group has equal rewards and gets exactly zero gradient."""
    gen = torch.Generator().manual_seed(2)
    b, k, d, sigma = 2, 3, 5, torch.tensor(0.4)
    mu = torch.randn(b, k, d, generator=gen, requires_grad=True)
    z = mu.detach().repeat_interleave(G, 0) + sigma * torch.randn(b * G, k, d, generator=gen)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, G)
    mask = torch.ones(b * G, k)
    mask[1, 2] = mask[3, 1:] = 0
    logp = gaussian_logprob(z, mu.repeat_interleave(G, 0), sigma)
    loss, clip_frac = policy_loss(logp, logp.detach(), adv, loss_type, mask=mask)
    loss.backward()

    n_tokens = {
        "grpo": mask.sum(1, keepdim=True) * b * G,
        "bnpo": mask.sum(),
        "dapo": mask.sum(),
        "dr_grpo": b * G * k,
    }
    weight = mask / n_tokens[loss_type]
    score = (z - mu.detach().repeat_interleave(G, 0)) / sigma**2
    per_sample = adv[:, None, None] * weight[..., None] * score
    expected = -per_sample.view(b, G, k, d).sum(1)
    torch.testing.assert_close(mu.grad, expected)
    assert clip_frac == 0
    assert mu.grad[0].abs().sum() > 0
    assert (mu.grad[1] == 0).all()


# --- the module --------------------------------------------------------------------------------


def test_batched_rollout_equals_decoding_each_pair_alone(backbone: Backbone) -> None:
    module = make_module(backbone, sigma_scale=1.0)
    ro = rollout(module)
    assert ro.latents.shape == (len(RECORDS) * G, 4, backbone.hidden_size)
    assert len({tuple(t) for t in ro.generation.token_ids}) > 2, "answers must depend on Z"
    lm = module.lm
    for q, prompt in enumerate(prompts(lm)):
        prefix = lm.encode(*lm.tokenize_prompts([prompt]))
        for s in range(G):
            z = ro.latents[q * G + s : q * G + s + 1].to(lm.base.dtype)
            alone = lm.generate(prefix, "lrt", latents=z, max_answer_tokens=6)
            assert alone.token_ids[0] == ro.generation.token_ids[q * G + s]
    assert ro.records == [r for r in RECORDS for _ in range(G)]
    assert ro.rewards.shape == ro.advantages.shape == (len(RECORDS) * G,)


def test_module_gradient_is_reinforce_and_equal_rewards_give_none(backbone: Backbone) -> None:
    module = make_module(backbone)
    ro = rollout(module)
    ro.advantages = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1]), G)
    loss, stats = module.loss(ro)
    assert stats["clip_frac"] == 0 and "kl" not in stats  # beta = 0: no reference pass
    grads = torch.autograd.grad(loss, list(module.reasoner.parameters()))

    mu = module._means(module.reasoner, ro.prefix).repeat_interleave(G, 0)
    score = (ro.latents - mu.detach()) / module.sigma() ** 2
    surrogate = -(ro.advantages[:, None] * (score * mu).sum(-1)).mean()
    expected = torch.autograd.grad(surrogate, list(module.reasoner.parameters()))
    got, want = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in expected])
    assert want.norm() > 0
    assert (got - want).norm() <= 1e-5 * want.norm()

    ro.advantages = group_advantages(torch.tensor([1.0] * G + [0.0] * G), G)
    loss, _ = module.loss(ro)
    loss.backward()
    assert all((p.grad == 0).all() for p in module.reasoner.parameters())


def test_kl_is_zero_at_start_and_matches_closed_form(backbone: Backbone) -> None:
    module = make_module(backbone, beta=0.5)
    ro = rollout(module)
    _, stats = module.loss(ro)
    # Not bit-exact: PyTorch picks another matmul path for weights without requires_grad.
    assert 0 <= stats["kl"] < 1e-9
    assert not any(p.requires_grad for p in module.ref_reasoner.parameters())
    with torch.no_grad():
        module.reasoner.f_out.bias.add_(0.01)
    _, stats = module.loss(ro)
    mu = module._means(module.reasoner, ro.prefix)
    mu_ref = module._means(module.ref_reasoner, ro.prefix)
    closed = ((mu - mu_ref) ** 2).sum(-1) / (2 * module.sigma() ** 2)
    torch.testing.assert_close(stats["kl"], closed.mean().detach())
    assert stats["kl"] > 0
    # The reference is saved with the module (for exact resumes), the base is not copied.
    keys = module.state_dict().keys()
    assert any(k.startswith("ref_reasoner.") for k in keys)
    assert sum(k.startswith("lm.base.") for k in keys) == len(module.lm.base.state_dict())


def test_learned_sigma_is_optimised_and_stays_in_its_clamp(backbone: Backbone) -> None:
    module = make_module(backbone, learn_sigma=True, sigma_min_scale=0.2, sigma_max_scale=0.4)
    rms = backbone.embedding_rms()
    optimizer = module.configure_optimizers()["optimizer"]
    assert any(p is module.log_sigma for g in optimizer.param_groups for p in g["params"])
    assert "log_sigma" in module.state_dict()
    ro = rollout(module)
    ro.advantages = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]), G)
    huge = torch.optim.SGD([module.log_sigma], lr=1e4)  # steps far beyond the clamp range
    for _ in range(3):
        huge.zero_grad()
        module.loss(ro)[0].backward()
        assert module.log_sigma.grad != 0
        huge.step()
        module._project_sigma()
        assert math.log(0.2 / 0.3) <= float(module.log_sigma.detach()) <= math.log(0.4 / 0.3)
        assert 0.2 * rms * (1 - 1e-6) <= float(module.sigma().detach()) <= 0.4 * rms * (1 + 1e-6)
    with torch.no_grad():
        module.log_sigma.fill_(50.0)
    assert float(module.sigma().detach()) == pytest.approx(0.4 * rms)


def test_noise_is_a_function_of_step_and_slot(backbone: Backbone) -> None:
    """A question's noise depends on (seed, step, its slot in the global batch) only: a fresh
    module (a resume) draws it again, and so does a rank or micro-batch holding the question
    without the others; another step draws new noise."""
    first = make_module(backbone, temperature=1.0, exploration="both")
    ids, mask = first.lm.tokenize_prompts(prompts(first.lm))
    both = first.rollout(ids, mask, RECORDS, slots=torch.tensor([0, 1]), step=3)
    again = make_module(backbone, temperature=1.0, exploration="both").rollout(
        ids, mask, RECORDS, slots=torch.tensor([0, 1]), step=3
    )
    torch.testing.assert_close(again.latents, both.latents)
    assert again.generation.token_ids == both.generation.token_ids
    alone = first.rollout(ids[1:], mask[1:], RECORDS[1:], slots=torch.tensor([1]), step=3)
    torch.testing.assert_close(alone.noise, both.noise[G:])
    assert alone.generation.token_ids == both.generation.token_ids[G:]
    later = first.rollout(ids, mask, RECORDS, slots=torch.tensor([0, 1]), step=4)
    assert not torch.equal(later.noise, both.noise)

    checkpoint = {"state_dict": {}}
    make_module(backbone).on_save_checkpoint(checkpoint)
    assert checkpoint["lrt"]["stage"] == "grpo"
    sft_meta = {**checkpoint["lrt"], "stage": "sft"}
    with pytest.raises(CheckpointError, match="no GRPO state"):
        make_module(backbone).on_load_checkpoint({"state_dict": {}, "lrt": sft_meta})


def test_learned_sigma_kl_is_against_the_reference_sigma(backbone: Backbone) -> None:
    """With mu = mu_ref, a sigma grown to twice the reference's still pays the Gaussian KL
    `d/2 (4 - 1 - log 4)` per latent (the equal-variance formula would give 0)."""
    module = make_module(backbone, beta=0.5, learn_sigma=True, sigma_max_scale=1.0)
    ro = rollout(module)
    with torch.no_grad():
        module.log_sigma.fill_(math.log(2.0))
    _, stats = module.loss(ro)
    d = backbone.hidden_size
    assert float(stats["kl"]) == pytest.approx(0.5 * d * (4 - 1 - math.log(4)), rel=1e-4)


def test_invalid_settings_name_their_key(compose_train) -> None:
    with pytest.raises(ConfigError, match="stage.num_generations=1 must be at least 2"):
        GRPOSettings(num_generations=1)
    with pytest.raises(ConfigError, match="stage.sigma_min_scale=0.5 must satisfy"):
        GRPOSettings(learn_sigma=True, sigma_min_scale=0.5)
    with pytest.raises(ConfigError, match="stage.rollout_batch_size=0 must be a positive"):
        GRPOSettings(rollout_batch_size=0)
    with pytest.raises(ConfigError, match="stage.rollout_batch_size=3 must be a multiple of stage"):
        GRPOSettings(rollout_batch_size=3, micro_batch_size=2)
    with pytest.raises(ConfigError, match="unknown key 'stage.sigma'"):
        typed(GRPOSettings, {"sigma": 0.3}, "stage")
    stage = OmegaConf.to_container(
        compose_train("stage=grpo", "stage.num_iterations=3", "stage.max_steps=100").stage
    )
    with pytest.raises(ConfigError, match="stage.max_steps=100 must be a multiple of stage"):
        typed(GRPOSettings, stage, "stage")
    default = OmegaConf.to_container(compose_train("stage=grpo").stage)
    assert typed(GRPOSettings, default, "stage").loss_type == "grpo"
    assert typed(GRPOSettings, default, "stage").mask_truncated_completions is False
    dapo = compose_train(
        "stage=grpo", "stage.loss_type=dapo", "stage.mask_truncated_completions=true"
    )
    settings = typed(GRPOSettings, OmegaConf.to_container(dapo.stage), "stage")
    assert (settings.loss_type, settings.mask_truncated_completions) == ("dapo", True)
    with pytest.raises(ConfigError, match="stage.mask_truncated_completions: Value 'sometimes'"):
        typed(GRPOSettings, {"mask_truncated_completions": "sometimes"}, "stage")


# --- rollout batches apart from the backward's micro-batches ----------------------------------

STEP_RECORDS = [
    *RECORDS,
    Record("c", "Start with 12. Subtract 5. Multiply by 3. What is the result?", "21"),
]


def grpo_step(module: GRPOModule, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list, Any]:
    """One GRPO step's rollouts on the 3 `STEP_RECORDS` at global slots 5, 2, 7 (as
    `training_step` draws them), the questions of each `rollout` call, and the step's loss
    with the trainable parameters' gradients (as `optimizer_step_on` accumulates them). The
    grader rewards answers of even length, so that the random model's groups differ."""
    monkeypatch.setattr("lrt.training.grpo.grade", lambda task, text, record: len(text) % 2 == 0)
    module.trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_records=STEP_RECORDS), world_size=1
    )
    calls, real = [], module.rollout

    def rollout(input_ids, attention_mask, records, slots, step):  # noqa: ANN001, ANN202
        calls.append([r.id for r in records])
        return real(input_ids, attention_mask, records, slots=slots, step=step)

    monkeypatch.setattr(module, "rollout", rollout)
    score = module.lm.answer_logprobs

    def answer_logprobs(prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        passes.append(prefix.batch_size)
        return score(prefix, *args, **kwargs)

    passes: list[int] = []
    monkeypatch.setattr(module.lm, "answer_logprobs", answer_logprobs)
    texts = [
        module.lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": r.question}], tokenize=False, add_generation_prompt=True
        )
        for r in STEP_RECORDS
    ]
    ids, mask = module.lm.tokenize_prompts(texts)
    batch = {"input_ids": ids, "attention_mask": mask, "index": torch.arange(3),
             "slot": torch.tensor([5, 2, 7])}  # fmt: skip
    rollouts = batch_rollouts(module, batch, step=3)
    units = sum(float(module.loss_units(r)) for r in rollouts)
    module.zero_grad()
    loss = sum(module.loss_sum(r)[0] for r in rollouts) / units
    loss.backward()
    # Every pass through the base scores one micro-batch (1 question x G answers), even where
    # the rollout batch holds 3: the sampling and reference policies' scores included.
    assert set(passes) <= {G}
    grads = [p.grad.clone() for p in module.trainable_parameters()]
    return rollouts, calls, (loss.detach(), grads)


@pytest.mark.parametrize(
    "settings",
    [
        {"exploration": "answer", "temperature": 1.0},
        {"exploration": "latent"},
        {"exploration": "both", "temperature": 1.0, "beta": 0.1, "num_iterations": 2},
    ],
    ids=["answer", "latent", "both-kl-2-iterations"],
)
def test_rollout_batch_size_decodes_together_and_changes_nothing_else(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch, settings: dict
) -> None:
    """With micro_batch_size 1 the step decodes its 3 questions in one call (x G rows), not one
    call per micro-batch, and trains on per-question chunks exactly as if it had decoded them
    one at a time (rollout_batch_size 1): same tokens and rewards (the randomness is keyed by
    slot), same loss and gradients, each chunk's answers trimmed to its own longest."""
    together, calls, (loss, grads) = grpo_step(
        make_module(backbone, micro_batch_size=1, **settings), monkeypatch
    )
    alone, alone_calls, (alone_loss, alone_grads) = grpo_step(
        make_module(backbone, micro_batch_size=1, rollout_batch_size=1, **settings), monkeypatch
    )
    assert calls == [["a", "b", "c"]] and alone_calls == [["a"], ["b"], ["c"]]
    assert [r.prefix.batch_size for r in together] == [1, 1, 1]
    for r, a in zip(together, alone, strict=True):
        assert r.generation.token_ids == a.generation.token_ids
        assert [x.id for x in r.records] == [x.id for x in a.records]
        assert torch.equal(r.rewards, a.rewards) and torch.equal(r.mask, a.mask)
        for name in ("latents", "advantages", "old_latent_logp", "old_answer_logp",
                     "ref_answer_logp", "answer_ids"):  # fmt: skip
            mine, theirs = getattr(r, name), getattr(a, name)
            assert (mine is None) == (theirs is None), name
            if mine is not None:
                torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
        if r.answer_ids is not None:
            assert r.answer_ids.shape[1] == max(len(t) for t in r.generation.token_ids)
    assert len({tuple(t) for r in together for t in r.generation.token_ids}) > 1
    torch.testing.assert_close(loss, alone_loss, atol=1e-5, rtol=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    for g, h in zip(grads, alone_grads, strict=True):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-5)


def test_a_rollout_batch_copies_each_questions_prompt_cache_once(
    backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded 3 questions at once and trained a question at a time, with a reference policy
    and 2 iterations to score: the micro-batch pieces are cut once, their prompt-cache rows
    copied once for the scoring passes and the loss alike (they were cut twice)."""
    cuts: list[int] = []
    pick = Rollout._pick

    def counted(rollout: Rollout, questions: torch.Tensor, *args: Any) -> Rollout:
        cuts.append(len(questions))  # each piece copies its questions' prompt-cache rows
        return pick(rollout, questions, *args)

    module = make_module(
        backbone, micro_batch_size=1, exploration="both", temperature=1.0, beta=0.1,
        num_iterations=2,
    )  # fmt: skip
    monkeypatch.setattr(Rollout, "_pick", counted)
    rollouts, calls, _ = grpo_step(module, monkeypatch)
    assert calls == [["a", "b", "c"]]
    assert cuts == [1, 1, 1]
    assert all(r.old_answer_logp is not None and r.ref_answer_logp is not None for r in rollouts)


def test_split_pieces_own_their_cache_rows_and_answer_width(backbone: Backbone) -> None:
    """A rollout split into questions stays whole (its cache keeps both rows), and a piece
    whose answers are shorter than the batch's longest drops the empty answer columns from
    every per-token field, the latent columns of `mask` kept."""
    module = make_module(backbone, exploration="both", temperature=1.0)
    whole = rollout(module)
    whole.answer_mask[G:, 2:] = 0  # question 1's answers: 2 tokens
    width = whole.answer_ids.shape[1]
    first, second = whole.split(1, G)
    assert whole.prefix.cache.layers[0].keys.shape[0] == 2 and whole.prefix.batch_size == 2
    assert first.prefix.cache.layers[0].keys.shape[0] == 1
    torch.testing.assert_close(
        second.prefix.cache.layers[0].keys, whole.prefix.cache.layers[0].keys[1:]
    )
    k = module.reasoner.num_latents
    assert first.answer_ids.shape[1] == width and first.mask.shape[1] == k + width
    assert second.answer_ids.shape == (G, 2) and second.mask.shape == (G, k + 2)
    assert second.drawn_answer_logp.shape == (G, 2)
    assert torch.equal(second.mask, whole.mask[G:, : k + 2])


# --- answer-token exploration (the paper's Algorithm 1) -----------------------------------------


def direct_answer_logprob(
    lm: LatentLM, prompt: str, z: torch.Tensor, answer: list[int]
) -> torch.Tensor:
    """log p(answer | prompt, Z) from one full-sequence pass over [prompt, open, Z, close,
    answer] embeddings, no cache: an independent transcription of the policy's log-prob."""
    ids = torch.tensor([lm.tokenizer(prompt, add_special_tokens=False).input_ids])
    embed = lm.backbone.embed
    answer_ids = torch.tensor([answer])
    seq = torch.cat(
        [
            embed(ids),
            embed(lm.open_ids)[None],
            z[None],
            embed(lm.close_ids)[None],
            embed(answer_ids),
        ],
        dim=1,
    )
    logits = lm.base(inputs_embeds=seq).logits[0, -len(answer) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, answer_ids[0, :, None]).sum()


def answer_module(backbone: Backbone, **settings) -> GRPOModule:
    return make_module(backbone, **{"exploration": "answer", "temperature": 1.0, **settings})


@contextmanager
def eos_bias(lm: LatentLM, bias: float = 3.5) -> Iterator[None]:
    """Raise the base's EOS logits by `bias` wherever its LM head runs (decoding and scoring):
    the tiny random base spreads its mass over 256 tokens and almost never stops within a few,
    so without it every sampled answer runs to the budget."""
    head = lm.base.get_output_embeddings()
    offset = torch.zeros(head.out_features)
    offset[list(lm.eos_ids)] = bias
    handle = head.register_forward_hook(lambda _m, _i, out: out + offset.to(out))
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_answer_exploration_gradient_is_reinforce_through_the_base(
    backbone: Backbone, loss_type: str
) -> None:
    """With num_iterations=1 and beta=0, d loss / dZ is the gradient of
    -sum_i w_i A_i log p(answer_i | Z) (w_i the loss type's weight); the base gets no gradient,
    and a group with equal rewards none either."""
    module = answer_module(backbone, loss_type=loss_type)
    ro = rollout(module)
    lengths = ro.answer_mask.sum(1)
    assert len({tuple(t) for t in ro.generation.token_ids}) > 2, "answers must be sampled"
    ro.advantages = group_advantages(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]), G)
    z = module._latents(module.reasoner, ro).detach().requires_grad_()
    module._latents = lambda reasoner, rollout: z  # type: ignore[method-assign]
    loss, stats = module.loss(ro)
    loss.backward()
    assert stats["clip_frac"] == 0
    assert all(p.grad is None for p in module.lm.base.parameters()), "the base got a gradient"

    n = len(RECORDS) * G
    weight = {
        "grpo": 1 / (n * lengths.float()),
        "bnpo": torch.full((n,), 1 / float(lengths.sum())),
        "dapo": torch.full((n,), 1 / float(lengths.sum())),
        "dr_grpo": torch.full((n,), 1 / (n * module.settings.max_answer_tokens)),
    }[loss_type]
    z2 = z.detach().clone().requires_grad_()
    texts = prompts(module.lm)
    surrogate = -sum(
        weight[i]
        * ro.advantages[i]
        * direct_answer_logprob(module.lm, texts[i // G], z2[i], ro.generation.token_ids[i])
        for i in range(n)
    )
    surrogate.backward()
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-4, atol=1e-7)
    assert z.grad[:G].abs().sum() > 0
    assert (z.grad[G:] == 0).all(), "the equal-reward group moved the latents"


def test_answer_exploration_equal_rewards_and_kl(backbone: Backbone) -> None:
    module = answer_module(backbone, beta=0.5)
    ro = rollout(module)
    ro.advantages = group_advantages(torch.tensor([1.0] * G + [0.0] * G), G)
    loss, stats = module.loss(ro)
    assert 0 <= stats["kl"] < 1e-6  # the reference is the starting reasoner
    loss.backward()
    grads = [p.grad for p in module.reasoner.parameters() if p.grad is not None]
    assert grads and all(g.abs().max() < 1e-6 for g in grads)
    with torch.no_grad():
        module.reasoner.f_out.bias.add_(0.05)
    _, stats = module.loss(ro)
    z = module._latents(module.reasoner, ro)
    logp = module.answer_policy.log_prob(ro.prefix, z, ro.answer_ids, ro.answer_mask)
    delta = ro.ref_answer_logp - logp
    k3 = ((delta.exp() - delta - 1) * ro.answer_mask).sum() / ro.answer_mask.sum()
    torch.testing.assert_close(stats["kl"], k3.detach())
    assert stats["kl"] > 0


def test_answer_logprobs_match_the_sampling_pass(backbone: Backbone) -> None:
    """The teacher-forced log-probs (the policy) equal those each token was drawn with, in every
    row and at every position, the EOS token of the rows that stopped included: the old
    log-probs of a second iteration, and the loss's own pass, make a ratio of 1 at the first."""
    module = answer_module(backbone, num_iterations=2, temperature=0.7)
    with eos_bias(module.lm):
        ro = rollout(module)
        (terms,) = module.policy_terms(ro)
    assert ro.old_answer_logp is not None and ro.answer_mask is not None
    stopped = [t[-1] in module.lm.eos_ids for t in ro.generation.token_ids]
    assert any(stopped) and not all(stopped), "both stopped and truncated rows are compared"
    assert ro.generation.sampled_logprobs is not None
    drawn = torch.cat([torch.tensor(row) for row in ro.generation.sampled_logprobs])
    counted = ro.answer_mask.bool()  # each row's tokens, left-aligned: row-major like `drawn`
    assert int(counted.sum()) == len(drawn) == sum(map(len, ro.generation.token_ids)) > 0
    assert not drawn.isnan().any(), "lrt decoding forces no token"
    torch.testing.assert_close(ro.old_answer_logp[counted], drawn, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(terms.logp.detach()[counted], drawn, rtol=1e-4, atol=1e-4)


def test_mask_truncated_completions_gives_a_truncated_answer_no_weight(backbone: Backbone) -> None:
    """With `stage.mask_truncated_completions`, a sample whose answer ran to the budget without
    EOS counts no loss token, so its latents get no gradient; it still counts as a sample
    (`grpo`'s mean over samples, as TRL's). Without the option it is weighed like the rest."""
    grads, units = {}, {}
    for flag in (False, True):
        module = answer_module(backbone, mask_truncated_completions=flag)
        with eos_bias(module.lm):
            ro = rollout(module)
            # Every sample gets a non-zero advantage (the tiny base answers nothing right).
            ro.advantages = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]), G)
            z = module._latents(module.reasoner, ro).detach().requires_grad_()
            module._latents = lambda reasoner, rollout, z=z: z  # type: ignore[method-assign]
            module.loss(ro)[0].backward()
        grads[flag] = z.grad.flatten(1).abs().sum(1)
        units[flag] = float(module.loss_units(ro))
        truncated = torch.tensor(ro.generation.truncated)
    assert truncated.any() and not truncated.all()
    assert (grads[False] > 0).all()
    assert (grads[True][truncated] == 0).all() and (grads[True][~truncated] > 0).all()
    assert units[False] == units[True] == len(RECORDS) * G


def test_both_exploration_adds_the_latent_and_answer_terms(backbone: Backbone) -> None:
    """Each sample's log-prob is its latent term (Z held fixed) plus its answer term (Z moved
    with the means, its noise held fixed): the gradient matches that transcription."""
    module = make_module(backbone, exploration="both", temperature=1.0)
    ro = rollout(module)
    assert ro.noise is not None and ro.answer_ids is not None
    ro.advantages = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]), G)
    params = list(module.reasoner.parameters())
    loss, _ = module.loss(ro)
    got = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    mu = module._means(module.reasoner, ro.prefix).repeat_interleave(G, 0)
    sigma = module.sigma()
    z = mu + sigma * ro.noise
    tokens = module.reasoner.num_latents + ro.answer_mask.sum(1)  # grpo: a sample's mean
    texts = prompts(module.lm)
    terms = [
        ro.advantages[i]
        * (
            gaussian_logprob(ro.latents[i : i + 1], mu[i : i + 1], sigma).sum()
            + direct_answer_logprob(module.lm, texts[i // G], z[i], ro.generation.token_ids[i])
        )
        / tokens[i]
        for i in range(len(RECORDS) * G)
    ]
    want = torch.autograd.grad(-torch.stack(terms).mean(), params)
    want = torch.cat([g.flatten() for g in want])
    assert want.norm() > 0
    assert (got - want).norm() <= 1e-4 * want.norm()


def test_answer_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="stage.exploration='tokens' is not one of"):
        GRPOSettings(exploration="tokens")
    with pytest.raises(ConfigError, match=r"stage.temperature=0.0 must be > 0 with stage.exp"):
        GRPOSettings(exploration="answer")
    with pytest.raises(ConfigError, match="stage.learn_sigma=True needs latent noise"):
        GRPOSettings(exploration="answer", temperature=1.0, learn_sigma=True)
    with pytest.raises(ConfigError, match="stage.batch_size=8 must be a multiple of stage.micro"):
        typed(GRPOSettings,
            {"max_steps": 4, "batch_size": 8, "checkpoint_every_n_steps": 2,
             "val_every_n_steps": 2, "micro_batch_size": 3}, "stage"
        )  # fmt: skip


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_grpo_two_steps(tmp_path: Path) -> None:
    reasoner = build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 1, "heads": 4}, "tiny-random-qwen3", 64, 0.02
    )
    reasoner.save_pretrained(tmp_path / "init")
    run_dir = tmp_path / "run"
    overrides = [
        "model=tiny_random",
        "stage=grpo",
        "stage.exploration=latent",  # learned sigma and its KL are latent-exploration features
        f"init_from={tmp_path / 'init'}",
        f"hydra.run.dir={run_dir}",
        "stage.max_steps=2",
        "stage.batch_size=2",
        "stage.num_generations=2",
        "stage.max_answer_tokens=3",
        "stage.val_every_n_steps=2",
        "stage.checkpoint_every_n_steps=1",
        "stage.log_samples_every_n_steps=1",
        "stage.learn_sigma=true",
        "stage.beta=0.1",
        "data.train.limit=8",
        "data.val.limit=2",
        "final_eval.enabled=false",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]
    result = run_entry("train.py", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert not any(k.startswith("lm.base.") for k in ckpt["state_dict"]), "base weights saved"
    assert "log_sigma" in ckpt["state_dict"] and ckpt["lrt"]["stage"] == "grpo"
    final = load_reasoner(run_dir / "reasoner" / "final", "tiny-random-qwen3", 64)
    assert final.num_latents == 4
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {0, 1} and len(rows) == 8
    assert set(rows[0]) == {"step", "question", "answer", "gold", "reward"}
    header = (run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("reward_mean", "frac_zero_std", "kl", "sigma", "clip_frac", "loss"):
        assert f"train/{name}" in header
    assert (run_dir / "grpo_curves.png").stat().st_size > 0


def test_rollouts_decode_from_the_dropout_free_means(backbone: Backbone) -> None:
    """With dropout, sampling around a dropped-out mu and scoring under another would make the
    first iteration's ratio differ from 1: GRPO keeps the reasoner's dropout off, as TRL's
    `disable_dropout` does, so the sampled and the scored means are the same."""
    module = make_module(backbone, dropout=0.5)
    module.train()
    assert not module.reasoner.training
    ro = rollout(module)
    mu = module._means(module.reasoner, ro.prefix).repeat_interleave(G, dim=0)
    torch.testing.assert_close(ro.latents - module.sigma() * ro.noise, mu)
    logp = gaussian_logprob(ro.latents, mu, module.sigma())
    torch.testing.assert_close(logp, ro.old_latent_logp)
