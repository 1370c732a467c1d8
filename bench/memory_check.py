"""The memory model checked at small scale: a real SFT step and a real answer-mode GRPO loss
pass of SmolLM2-135M on CPU in float32, each in a fresh process, their peak RSS growth against
what `bench/memory_model.py`'s formulas predict for the same sizes.

    OMP_NUM_THREADS=1 python bench/memory_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import torch
from common import (
    CPU_PEAK_ENV,
    environment,
    latent_lm,
    load,
    parser,
    random_ids,
    rss_status,
    start_cpu_peak,
    write_json,
)
from memory_model import Setup, Shape, phases

from lrt.lm import logprobs

CASES = [
    # (step, activation checkpointing, LM-head chunk)
    ("sft", True, 256),
    ("sft", False, 256),
    ("grpo", True, 256),
    ("grpo", False, 256),
    ("sft", True, logprobs.CHUNK),
]


def measure_case(args: Any, step: str, checkpointing: bool, chunk: int) -> dict[str, Any]:
    """One real step in this (fresh) process: its peak RSS growth over the RSS just before
    it (the kernel's high-water mark reset by writing 5 to /proc/self/clear_refs), and the
    model's prediction for the same sizes in float32."""
    import functools

    import lrt.lm.latent_lm
    from lrt.training.grpo_loss import group_advantages, policy_loss

    lrt.lm.latent_lm.token_logprobs = functools.partial(logprobs.token_logprobs, chunk=chunk)
    backbone = load(args.model, "cpu", activation_checkpointing=checkpointing)
    lm = latent_lm(backbone, args.k)
    b = args.batch if step == "sft" else 1
    g, m = (1, args.answer_len) if step == "sft" else (args.group, args.answer_len // 2)
    ids = random_ids(backbone, b, args.prompt_len, seed=1)
    mask = torch.ones_like(ids)

    def run(m: int) -> None:
        lm.reasoner.zero_grad(set_to_none=True)
        answers = random_ids(backbone, b * g, m, seed=2)
        if step == "sft":
            lm.sft_loss(ids, mask, answers, torch.ones_like(answers)).backward()
            return
        rewards = torch.arange(b * g).remainder(2).float()
        prefix = lm.encode(ids, mask)
        z = lm.reason(prefix).repeat_interleave(g, dim=0)
        logp = lm.answer_logprobs(prefix.fork(g), z, answers, torch.ones_like(answers))
        loss, _ = policy_loss(logp, logp.detach(), group_advantages(rewards, g), "bnpo")
        loss.backward()

    run(4)  # start-up allocations (thread pools, kernels) land here, unmeasured
    before = start_cpu_peak()
    run(m)
    measured = rss_status()[1] - before
    u = Setup(
        stage=step,
        base=Shape.of(backbone.model.config),
        body=None,
        reasoner_params=sum(p.numel() for p in lm.reasoner.parameters()),
        latents=args.k,
        prompt=args.prompt_len,
        answer=m,
        markers=lm.span_positions("lrt") - args.k,
        batch=b,
        micro=b,
        rollout=b,
        generations=g,
        checkpointing=checkpointing,
        dtype_bytes=4,
        autocast=False,
        chunk=chunk,
    )
    phase = phases(u, 1)["sft step" if step == "sft" else "loss pass"]
    terms = {**phase, "reasoner gradients": 4 * u.reasoner_params}
    predicted = sum(terms.values())
    return {
        "step": step,
        "checkpointing": checkpointing,
        "chunk": chunk,
        "rows": b * g,
        "answer": m,
        "predicted_mb": predicted / 2**20,
        "measured_mb": measured / 2**20,
        "ratio": predicted / measured,
        "terms_mb": {k: v / 2**20 for k, v in terms.items()},
    }


def check(args: Any) -> dict[str, Any]:
    rows = []
    for step, checkpointing, chunk in CASES:
        case = f"{step},{int(checkpointing)},{chunk}"
        cmd = [sys.executable, __file__, *sys.argv[1:], "--case", case]
        env = {**os.environ, **CPU_PEAK_ENV}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{r['step']:4} checkpointing={str(r['checkpointing']):5} chunk={r['chunk']:4} "
            f"rows={r['rows']} answer={r['answer']}: predicted {r['predicted_mb']:7.0f} MB, "
            f"measured {r['measured_mb']:7.0f} MB, ratio {r['ratio']:.2f} "
            f"({'within' if abs(r['ratio'] - 1) <= 0.2 else 'NOT within'} 20%)",
            flush=True,
        )
        for name, value in r["terms_mb"].items():
            print(f"      {value:8.1f} MB  {name}")
    return {"env": environment("cpu"), "args": vars(args), "rows": rows}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2, help="SFT questions")
    p.add_argument("--group", type=int, default=4, help="GRPO answers per question")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens")
    p.add_argument("--answer-len", type=int, default=1024, help="SFT answer (GRPO: half)")
    p.add_argument("--k", type=int, default=8, help="latents")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case is not None:
        step, ckpt, chunk = args.case.split(",")
        print(json.dumps(measure_case(args, step, ckpt == "1", int(chunk))))
        return
    write_json(args.out, "memory_check.json", check(args))


if __name__ == "__main__":
    main()
