"""SFT's micro-batches: grouped by answer length, trimmed, and the same loss and gradient."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lrt.lm.latent_lm import LatentLM
from lrt.reasoner import latent_spread
from lrt.training.sft import SFTModule, length_grouped_chunks

QUESTIONS = ["What is 7?", "Start with 4. Add 13.", "Start with 12. Multiply by 3. Add 1.", "2+2?"]
SHORT = ["7", "17", "37", "4"]
LONG = [f"Step by step: {q} " * 4 + "The answer is 9." for q in QUESTIONS]


def mixed_batch(lm: LatentLM) -> dict[str, torch.Tensor]:
    """Eight rows whose answers alternate short and long, one of them a rank's padding row."""
    prompts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in QUESTIONS * 2]
    answers = [a for pair in zip(SHORT, LONG, strict=True) for a in pair]
    ids, mask = lm.tokenize_prompts(prompts)
    answer_ids, answer_mask = lm.tokenize_answers(answers)
    slot = torch.tensor([0, 1, 2, 3, 4, 5, 6, -1])
    answer_mask = answer_mask * (slot >= 0).unsqueeze(1)  # as training_step masks padding rows
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "answer_ids": answer_ids,
        "answer_mask": answer_mask,
        "slot": slot,
    }


def step_loss_and_grad(lm: LatentLM, chunks: list[dict]) -> tuple[float, torch.Tensor]:
    """The step's loss, the answer NLL summed over `chunks` and divided by the batch's token
    count as `optimizer_step_on` divides it, and its reasoner gradient, accumulated."""
    lm.reasoner.zero_grad()
    tokens = sum(int(chunk["answer_mask"].sum()) for chunk in chunks)
    total = 0.0
    for chunk in chunks:
        nll = lm.sft_loss(
            chunk["input_ids"],
            chunk["attention_mask"],
            chunk["answer_ids"],
            chunk["answer_mask"],
            reduction="sum",
        )
        (nll / tokens).backward()
        total += float(nll.detach()) / tokens
    grad = torch.cat([p.grad.flatten() for p in lm.reasoner.parameters() if p.grad is not None])
    return total, grad


def padding(chunks: list[dict]) -> int:
    """Padded prompt and answer positions the forward passes go through."""
    return sum(
        int((c["attention_mask"] == 0).sum() + (c["answer_mask"] == 0).sum()) for c in chunks
    )


@pytest.mark.parametrize("size", [1, 2, 4])
def test_length_grouped_micro_batches_give_the_whole_batch_loss_and_gradient(
    tiny_lm: LatentLM, size: int
) -> None:
    """Sorted by answer length and trimmed, micro-batches accumulate the loss and gradient of
    the whole batch in one pass (and of chunks cut in sampled order), with less padding."""
    batch = mixed_batch(tiny_lm)
    whole_loss, whole_grad = step_loss_and_grad(tiny_lm, [batch])
    plain = [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, 8, size)]
    plain_loss, plain_grad = step_loss_and_grad(tiny_lm, plain)
    grouped = length_grouped_chunks(batch, size)
    loss, grad = step_loss_and_grad(tiny_lm, grouped)
    assert len(grouped) == 8 // size
    assert sorted(torch.cat([c["slot"] for c in grouped]).tolist()) == list(range(-1, 7))
    for want, want_grad in ((whole_loss, whole_grad), (plain_loss, plain_grad)):
        assert loss == pytest.approx(want, rel=1e-5)
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5)
    assert padding(grouped) < padding(plain)


def test_one_micro_batch_is_the_batch_as_it_came(tiny_lm: LatentLM) -> None:
    batch = mixed_batch(tiny_lm)
    (chunk,) = length_grouped_chunks(batch, 8)
    assert chunk is batch


def test_the_logged_spread_skips_the_padding_row_wherever_grouping_moves_it(
    tiny_lm: LatentLM,
) -> None:
    """The latents come back in grouped order, so which of them are counted is read off the
    chunks: the rank's padding row (here sorted from last to first) stays out of the spread."""
    batch = mixed_batch(tiny_lm)
    logged: dict[str, float] = {}
    module = SimpleNamespace(
        lm=tiny_lm,
        settings=SimpleNamespace(micro_batch_size=2, latent_loss="none"),
        all_sum=lambda v: torch.as_tensor(v, dtype=torch.float64),
        log=lambda key, value, **_: logged.__setitem__(key, value),
        lr_schedulers=lambda: SimpleNamespace(get_last_lr=lambda: [0.0]),
    )
    module.answer_nll = lambda chunk: SFTModule.answer_nll(module, chunk)
    module.blind_rows = lambda slots: None  # no question dropout
    module.optimizer_step_on = lambda chunks, loss, count: (
        sum(loss(c).detach() for c in chunks) / count
    )
    module.batch_spread = lambda counted: SFTModule.batch_spread(module, counted)
    SFTModule.training_step(module, batch, 0)
    with torch.no_grad():
        z = tiny_lm.reason(tiny_lm.encode(batch["input_ids"], batch["attention_mask"]))
    assert logged["train/latent_spread"] == pytest.approx(latent_spread(z[:7]), rel=1e-4)
