"""Peak memory and time of one answer-mode GRPO step, this tree against an earlier commit.

The step is the training path itself (`lrt.training.pool.batch_rollouts`, then the loss and
its backward): decode G answers per question from the latents, score them under the
reference reasoner (the KL), then back-propagate the clipped-ratio loss through the frozen
base into the reasoner, with the paper's settings (answer exploration, beta 2e-3, activation
checkpointing). EOS is suppressed so that every answer runs to `--answer-len` tokens.

Each tree runs in its own process (`git archive <rev> lrt` unpacked to a temporary folder for
the earlier one), so that each peak is its own: the GPU allocator's peak, or on CPU the growth
of peak RSS over the RSS just before the step (weights resident, after a warm-up step of
4-token answers; glibc made to return freed blocks, `common.CPU_PEAK_ENV`).

    OMP_NUM_THREADS=1 python bench/grpo_step_memory.py --before 355fe14
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import torch
from common import (
    CPU_PEAK_ENV,
    ROOT,
    environment,
    latent_lm,
    load,
    parser,
    ratio,
    rss_status,
    start_cpu_peak,
    sync,
    write_json,
)


def step(args: argparse.Namespace) -> dict:
    """One measured GRPO step (after a short warm-up) with the `lrt` this process imports."""
    import lrt
    from lrt.data.records import Record
    from lrt.training.grpo import GRPOModule
    from lrt.training.pool import batch_rollouts
    from lrt.training.settings import GRPOSettings

    backbone = load(args.model, args.device, activation_checkpointing=True)
    lm = latent_lm(backbone, args.k)
    lm.eos_ids = frozenset()  # every answer runs to its budget: the step's largest shapes
    question = "Natalia sold clips to 48 of her friends in April. " * (args.prompt_len // 12)

    def module(answer_len: int) -> GRPOModule:
        settings = GRPOSettings(
            exploration="answer", num_generations=args.group, max_answer_tokens=answer_len,
            temperature=1.0, beta=2e-3, micro_batch_size=1, max_steps=1,
        )  # fmt: skip
        m = GRPOModule(lm, "arith", settings)
        records = [Record(str(i), question, "1") for i in range(8)]
        m.trainer = SimpleNamespace(datamodule=SimpleNamespace(train_records=records), world_size=1)
        return m

    ids, mask = lm.tokenize_prompts([question] * args.batch)
    batch = {"input_ids": ids, "attention_mask": mask, "index": torch.arange(args.batch),
             "slot": torch.arange(args.batch)}  # fmt: skip

    def run(m: GRPOModule) -> int:
        rollouts = batch_rollouts(m, batch, 0)
        units = sum(float(m.loss_units(r)) for r in rollouts)
        m.zero_grad()
        for r in rollouts:
            (m.loss_sum(r)[0] / units).backward()
        return sum(int(r.answer_mask.sum()) for r in rollouts)

    run(module(4))  # one-off allocations (thread pools, kernels) land here, unmeasured
    measured = module(args.answer_len)
    sync(args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = start_cpu_peak() / 2**20
    start = time.perf_counter()
    tokens = run(measured)
    sync(args.device)
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        peak = rss_status()[1] / 2**20 - before
    return {"lrt": str(Path(lrt.__file__).parent), "peak_mb": peak, "step_s": seconds,
            "answer_tokens": tokens}  # fmt: skip


def export(rev: str, into: Path) -> Path:
    """The `lrt` package as of `rev`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "lrt"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--before", default="355fe14", help="the earlier commit to compare with ('': none)"
    )
    p.add_argument("--batch", type=int, default=1, help="questions (B)")
    p.add_argument("--group", type=int, default=8, help="answers per question (G)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--answer-len", type=int, default=256)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(step(args)))
        return
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"after": ROOT}
        if args.before:
            trees = {f"before ({args.before})": export(args.before, Path(tmp)), **trees}
        for name, tree in trees.items():
            path = os.pathsep.join([str(tree), str(ROOT / "bench")])
            env = {**os.environ, **CPU_PEAK_ENV, "PYTHONPATH": path}
            cmd = [sys.executable, __file__, *sys.argv[1:], "--measure"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(name, rows[name], flush=True)
    after = rows["after"]
    print(
        f"\n{args.model} on {args.device}: one answer-mode GRPO step, B={args.batch}, "
        f"G={args.group}, K={args.k}, answers of {args.answer_len} tokens, checkpointing on: "
        f"peak {after['peak_mb']:.0f} MB, {after['step_s']:.2f} s"
    )
    drop = float("nan")
    if args.before:
        before = rows[f"before ({args.before})"]
        drop = ratio(before["peak_mb"], after["peak_mb"])
        print(
            f"before ({args.before}): peak {before['peak_mb']:.0f} MB, {before['step_s']:.2f} s; "
            f"{drop:.2f}x lower after"
        )
    write_json(
        args.out,
        "grpo_step_memory.json",
        {"args": vars(args), "env": environment(args.device), "rows": rows, "memory_drop": drop},
    )


if __name__ == "__main__":
    main()
