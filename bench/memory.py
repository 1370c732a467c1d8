"""Peak memory and time of an SFT step and an answer-mode GRPO step, before and after the
memory paths (chunked chosen-token log-probs, activation checkpointing through the base).

Each variant runs in its own process so that its peak is its own: the GPU allocator's peak,
or on CPU the growth of peak RSS over the process' RSS just before the step (weights and
inputs already resident, after a short warm-up step). The variants:

- `full log-softmax`: today's numbers computed the old way, a float32 log-softmax over
  `[B, m, V]` kept for the backward pass (`token_logprobs` swapped for it);
- `selective`: chunked chosen-token log-probs (`lrt.lm.logprobs`), the default;
- `+ checkpointing`: each also with `model.activation_checkpointing=true`.

The GRPO step is the loss pass of answer-mode GRPO: B prompts encoded once, forked into G
rows, the clipped-ratio loss on G sampled answers of `--answer-len` tokens back-propagated
through the frozen base into the reasoner. (Sampling the answers runs without gradients and
costs the same in every variant, so random answer tokens stand in for it.)

    OMP_NUM_THREADS=1 python bench/memory.py          # SmolLM2-135M on CPU, B=2, G=4, 512
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch
from common import environment, latent_lm, load, parser, random_ids, ratio, sync, write_json

import lrt.lm.latent_lm
from lrt.training.grpo_loss import group_advantages, policy_loss

VARIANTS = {
    "full log-softmax": (False, False),
    "selective": (True, False),
    "full log-softmax + checkpointing": (False, True),
    "selective + checkpointing": (True, True),
}
"""name -> (chunked chosen-token log-probs, activation checkpointing)."""


def full_logprobs(head, hidden, targets, temperature: float = 1.0) -> torch.Tensor:
    """The pre-change scoring: the whole `[B, m, V]` float32 log-softmax, then a gather."""
    logits = head(hidden).float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(fn, device: str) -> tuple[float, float]:
    """(peak memory of one call in MB, wall time of a second call in s)."""
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    fn()
    sync(device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    start = time.perf_counter()
    fn()
    sync(device)
    return peak, time.perf_counter() - start


def run_variant(args, name: str) -> dict:
    selective, checkpointing = VARIANTS[name]
    if not selective:
        lrt.lm.latent_lm.token_logprobs = full_logprobs
    backbone = load(args.model, args.device, activation_checkpointing=checkpointing)
    lm = latent_lm(backbone, args.k)
    b, g, m = args.batch, args.group, args.answer_len
    ids = random_ids(backbone, b, args.prompt_len, seed=1)
    mask = torch.ones_like(ids)

    def sft(m: int = m) -> None:
        ans = random_ids(backbone, b, m, seed=2)
        lm.reasoner.zero_grad(set_to_none=True)
        lm.sft_loss(ids, mask, ans, torch.ones_like(ans)).backward()

    def grpo(m: int = m) -> None:
        answers = random_ids(backbone, b * g, m, seed=3)
        answer_mask = torch.ones_like(answers)
        rewards = torch.arange(b * g, device=answers.device).remainder(2).float()
        lm.reasoner.zero_grad(set_to_none=True)
        with torch.no_grad():
            prefix = lm.encode(ids, mask)
        z = lm.reason(prefix).repeat_interleave(g, dim=0)
        logp = lm.answer_logprobs(prefix.fork(g), z, answers, answer_mask)
        loss, _ = policy_loss(
            logp, logp.detach(), group_advantages(rewards, g), "bnpo", mask=answer_mask
        )
        loss.backward()

    row = {"variant": name}
    sft(4), grpo(4)  # one-off start-up allocations (thread pools, kernels) land here, unmeasured
    for step, fn in (("sft", sft), ("grpo", grpo)):
        peak, seconds = measure(fn, args.device)
        row[f"{step}_peak_mb"], row[f"{step}_s"] = peak, seconds
    return row


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2, help="questions (B)")
    p.add_argument("--group", type=int, default=4, help="answers per question (G)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--answer-len", type=int, default=512)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--variant", choices=list(VARIANTS), default=None)
    args = p.parse_args()
    if args.variant is not None:
        print(json.dumps(run_variant(args, args.variant)))
        return
    rows = []
    for name in VARIANTS:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(
        f"\n{args.model} on {args.device}: B={args.batch}, G={args.group}, prompt "
        f"{args.prompt_len}, answers {args.answer_len}, K={args.k}; peak = growth over the "
        "pre-step memory"
    )
    print(f"{'variant':34} {'SFT MB':>8} {'SFT s':>7} {'GRPO MB':>8} {'GRPO s':>7}")
    for r in rows:
        print(
            f"{r['variant']:34} {r['sft_peak_mb']:8.0f} {r['sft_s']:7.2f} "
            f"{r['grpo_peak_mb']:8.0f} {r['grpo_s']:7.2f}"
        )
    before, after = rows[0], rows[-1]
    summary = {
        f"{step}_{what}": ratio(before[f"{step}_{key}"], after[f"{step}_{key}"])
        if what == "memory_drop"
        else ratio(after[f"{step}_{key}"], before[f"{step}_{key}"])
        for step in ("sft", "grpo")
        for what, key in (("memory_drop", "peak_mb"), ("time_ratio", "s"))
    }
    print(
        f"answer-mode GRPO step, selective + checkpointing vs full log-softmax: memory "
        f"{summary['grpo_memory_drop']:.2f}x lower (target >= 2x), time "
        f"{summary['grpo_time_ratio']:.2f}x (target <= 1.4x)"
    )
    write_json(
        args.out,
        "memory.json",
        {"args": vars(args), "env": environment(args.device), "rows": rows, **summary},
    )


if __name__ == "__main__":
    main()
