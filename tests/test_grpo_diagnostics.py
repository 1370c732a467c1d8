"""GRPO's diagnostics (issue 33): the log-probs the loss scores equal those the answers were
drawn with; the gradient's sign raises the probability of a rewarded answer; validation
reports greedy accuracy and sampled pass@1 side by side."""

from __future__ import annotations

import csv
import string
from pathlib import Path

import pytest
import torch
from conftest import run_entry
from test_grpo import ROOT, G, answer_module, backbone, prompts, rollout  # noqa: F401

from lrt.backbone import Backbone
from lrt.config import validate_train
from lrt.data.records import Record
from lrt.plots import validation_series
from lrt.reasoner import build_reasoner
from lrt.training import grpo
from lrt.training.grpo_loss import LOSS_TYPES, group_advantages, zero_std_groups
from lrt.training.optim import OptimConfig

LR = 1e-3


def test_loss_scores_the_answers_with_the_log_probs_they_were_drawn_with(
    backbone: Backbone,  # noqa: F811
) -> None:
    """At the first iteration the ratio is exactly the sampling policy's: `logratio_max`
    (max |log-prob the loss takes for the sampler's - log-prob the token was drawn with|) is
    rounding, at a temperature other than 1; scored at the wrong temperature it is not."""
    module = answer_module(backbone, temperature=0.7)
    ro = rollout(module)
    assert ro.drawn_answer_logp is not None
    _, stats = module.loss(ro)
    assert stats["logratio_max"] < 1e-4
    module.answer_policy.temperature = 1.0  # a loss that forgot the sampling temperature
    _, stats = module.loss(rollout(module))
    assert stats["logratio_max"] > 1e-2


QUESTIONS = [Record(str(i), f"What is {i} plus {i + 3}?", str(2 * i + 3)) for i in range(16)]


def target_probability(module: grpo.GRPOModule, token: int) -> float:
    """Mean over the 16 questions of p(first answer token = `token` | question, Z)."""
    lm = module.lm
    texts = [
        lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": r.question}], tokenize=False, add_generation_prompt=True
        )
        for r in QUESTIONS
    ]
    with torch.no_grad():
        prefix = lm.encode(*lm.tokenize_prompts(texts))
        ids = torch.full((len(QUESTIONS), 1), token)
        logp = lm.answer_logprobs(prefix, lm.reason(prefix), ids, torch.ones_like(ids))
    return float(logp.exp().mean())


@pytest.mark.parametrize("sign", [1, -1])
def test_rewarding_one_answer_raises_its_probability_at_every_step(
    backbone: Backbone,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    sign: int,
) -> None:
    """On 16 fixed questions, reward one fixed one-token answer (the one sampled most at the
    start): its probability must rise at every optimiser step; rewarding every other answer
    instead must lower it at every step. Runs the module's own rollout, loss and optimiser."""
    module = answer_module(
        backbone, max_answer_tokens=1, num_generations=64, optim=OptimConfig(lr=LR)
    )
    lm = module.lm
    inputs = lm.tokenize_prompts(
        [
            lm.tokenizer.apply_chat_template(
                [{"role": "user", "content": r.question}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for r in QUESTIONS
        ]
    )
    # The likeliest token whose text is one printable character (and so names it alone).
    printable = {lm.tokenizer.convert_tokens_to_ids(c): c for c in string.ascii_letters}
    token = max(printable, key=lambda t: target_probability(module, t))
    target = printable[token]
    monkeypatch.setattr(grpo, "grade", lambda task, text, record: (text == target) == (sign > 0))
    optimizer = module.configure_optimizers()["optimizer"]
    probabilities = [target_probability(module, token)]
    for step in range(5):
        ro = module.rollout(*inputs, QUESTIONS, step=step)
        assert step > 0 or not ro.zero_std.all(), "no group both drew and missed the target"
        loss, _ = module.loss(ro)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        probabilities.append(target_probability(module, token))
    steps = torch.tensor(probabilities).diff()
    assert ((sign * steps) > 0).all(), probabilities


@pytest.mark.slow
def test_grpo_validates_greedy_and_sampled_on_its_own_number_of_questions(
    tmp_path: Path,
) -> None:
    """A GRPO run logs `val/accuracy` (greedy: the final table's number, which picks
    `reasoner/best`) and `val/pass@1` (sampled as the rollouts are), on `stage.val_limit`
    questions rather than `data.val.limit`, before the first step too (`stage.val_at_start`),
    and the step-0 check `train/logratio_max`."""
    reasoner = build_reasoner(
        {"num_latents": 4, "width": 32, "depth": 1, "heads": 4}, "tiny-random-qwen3", 64, 0.02
    )
    reasoner.save_pretrained(tmp_path / "init")
    run_dir = tmp_path / "run"
    overrides = [
        "model=tiny_random",
        "stage=grpo",
        f"init_from={tmp_path / 'init'}",
        f"hydra.run.dir={run_dir}",
        "stage.max_steps=2",
        "stage.batch_size=2",
        "stage.num_generations=2",
        "stage.max_answer_tokens=3",
        "stage.val_every_n_steps=2",
        "stage.val_limit=3",
        "stage.val_samples=2",
        "data.train.limit=8",
        "data.val.limit=2",
        "data.max_answer_tokens=3",
        "final_eval.enabled=false",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]
    result = run_entry("train.py", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "8 train and 3 validation records" in log
    assert "validation pass@1" in log and "(6 samples at temperature 0.7)" in log
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    assert any(r.get("val/accuracy") for r in rows) and any(r.get("val/pass@1") for r in rows)
    # stage.val_at_start: the curves start at the reasoner GRPO was given, at step 0.
    assert "step 0: validation accuracy" in log and "step 0: validation pass@1" in log
    taken = [float(r["val/steps_taken"]) for r in rows if r.get("val/accuracy")]
    assert taken == [0.0, 2.0]
    assert validation_series(rows, "val/pass@1")[0] == [0.0, 2.0]  # where the curves put them
    gaps = [float(r["train/logratio_max"]) for r in rows if r.get("train/logratio_max")]
    assert gaps and max(gaps) < 1e-3


def test_rollouts_answer_at_the_budget_they_are_scored_at(compose_train) -> None:
    """The shipped GRPO decodes its rollouts at `data.max_answer_tokens`, the budget of
    validation and of the final table (the old 8 truncated every arith solution to reward 0);
    an explicit `stage.max_answer_tokens` still wins."""
    config = validate_train(compose_train("stage=grpo"))
    assert config.stage.max_answer_tokens == config.data.max_answer_tokens == 32
    config = validate_train(compose_train("stage=grpo", "data.max_answer_tokens=20"))
    assert config.stage.max_answer_tokens == 20
    config = validate_train(compose_train("stage=grpo", "stage.max_answer_tokens=12"))
    assert config.stage.max_answer_tokens == 12


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_groups_with_equal_rewards_are_skipped_without_changing_the_gradient(
    backbone: Backbone,  # noqa: F811
    loss_type: str,
) -> None:
    """Without a KL term a group with equal rewards adds nothing to the loss: the step's
    passes through the base skip it, and the loss and gradient are those of the whole batch.
    Except under `bnpo`, which divides by the micro-batch's own tokens: there the step must
    not skip them, since leaving them out would change the loss."""
    module = answer_module(backbone, loss_type=loss_type)
    ro = rollout(module)
    rewards = torch.tensor([1.0, 0, 0, 1] + [1.0] * G)
    ro.advantages = group_advantages(rewards, G)
    ro.zero_std = zero_std_groups(rewards, G)

    def gradient(r) -> tuple[torch.Tensor, list[torch.Tensor]]:
        module.reasoner.zero_grad()
        total, _ = module.loss_sum(r)
        total.backward()
        return total.detach(), [p.grad.clone() for p in module.reasoner.parameters()]

    whole, whole_grads = gradient(ro)
    narrowed = ro.keep_groups(~ro.zero_std, G)
    assert narrowed.answer_ids.shape[0] == G  # one group's samples go through the base
    part, part_grads = gradient(narrowed)
    got, want = (
        torch.cat([g.flatten() for g in part_grads]),
        torch.cat([g.flatten() for g in whole_grads]),
    )
    assert want.norm() > 0
    same = bool((part - whole).abs() <= 1e-5 * whole.abs()) and bool(
        (got - want).norm() <= 1e-5 * want.norm()
    )
    assert same == module.settings.skips_equal_reward_groups == (loss_type != "bnpo")
