"""SFT step: cached-prefix path against a naive full-sequence path (time, tokens/s, memory).

The cached path encodes the prompt once without gradients and runs only
`[open, Z, close, answer]` with gradients on top of its KV cache. The naive path encodes the
prompt for the reasoner's input, then runs the whole `[prompt, open, Z, close, answer]` again
with gradients each step. Each path runs in its own process so that peak memory (GPU
allocator peak, or peak RSS on CPU) is its own.

    python bench/train_step.py                       # SmolLM2-135M on CPU
    python bench/train_step.py --model qwen3_1_7b_random --batch 16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from common import (
    environment,
    gpu_peak_tflops,
    latent_lm,
    load,
    parser,
    peak_memory_mb,
    random_ids,
    ratio,
    reset_peak,
    timed,
    write_json,
)


def step_fn(lm, ids, mask, ans, ans_mask, naive: bool):
    """One SFT step (forward + backward, no optimiser) through the chosen path."""

    def cached() -> float:
        lm.reasoner.zero_grad(set_to_none=True)
        loss = lm.sft_loss(ids, mask, ans, ans_mask)
        loss.backward()
        return float(loss)

    def full() -> float:
        lm.reasoner.zero_grad(set_to_none=True)
        prefix = lm.encode(ids, mask)  # the reasoner needs H; its cache is thrown away
        z = lm.reason(prefix)
        b = ids.shape[0]
        embeds = torch.cat(
            [lm.backbone.embed(ids), lm.thinking_embeds(z, b), lm.backbone.embed(ans)], dim=1
        )
        full_mask = torch.cat(
            [mask, mask.new_ones(b, embeds.shape[1] - ids.shape[1] - ans.shape[1]), ans_mask], 1
        )
        m = ans.shape[1]
        logits = lm.base(
            inputs_embeds=embeds, attention_mask=full_mask, logits_to_keep=m + 1
        ).logits
        logp = torch.log_softmax(logits[:, :m].float(), -1).gather(-1, ans[..., None]).squeeze(-1)
        loss = -(logp * ans_mask).sum() / ans_mask.sum()
        loss.backward()
        return float(loss)

    return full if naive else cached


def run_one(args, naive: bool, dtype: str | None) -> dict:
    backbone = load(args.model, args.device, **({"dtype": dtype} if dtype else {}))
    lm = latent_lm(backbone, args.k)
    ids = random_ids(backbone, args.batch, args.prompt_len, seed=1)
    mask = torch.ones_like(ids)
    ans = random_ids(backbone, args.batch, args.answer_len, seed=2)
    ans_mask = torch.ones_like(ans)
    fn = step_fn(lm, ids, mask, ans, ans_mask, naive)
    reset_peak(args.device)
    seconds, loss = timed(fn, args.device, args.repeats)
    tokens = args.batch * (args.prompt_len + args.answer_len)
    n_params = sum(p.numel() for p in backbone.model.parameters())
    # forward over every token the path processes + backward (input grads only) over the suffix
    suffix = lm.open_ids.numel() + args.k + lm.close_ids.numel() + args.answer_len
    fwd_tokens = args.prompt_len + suffix + (args.prompt_len if naive else 0)
    flops = 2 * n_params * args.batch * (fwd_tokens + suffix)
    peak = gpu_peak_tflops()
    return {
        "path": "naive" if naive else "cached",
        "dtype": str(backbone.model.dtype).removeprefix("torch."),
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_mem_mb": peak_memory_mb(args.device),
        "tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / peak if peak else None,
        "loss": loss,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--answer-len", type=int, default=32)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--path", choices=["both", "cached", "naive"], default="both")
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="the frozen base's dtypes to compare on the cached path, e.g. float32 bfloat16 "
        "(default: the model config's, float32 on CPU; the reasoner stays float32)",
    )
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.path != "both" and args.dtypes is None:
        print(json.dumps(run_one(args, args.path == "naive", args.dtype)))
        return
    runs = (
        [("cached", d) for d in args.dtypes] if args.dtypes else [("cached", None), ("naive", None)]
    )
    rows = []
    for path, dtype in runs:
        cmd = [sys.executable, __file__, *_without_dtypes(sys.argv[1:]), "--path", path]
        cmd += ["--dtype", dtype] if dtype else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    speedup = ratio(rows[1]["step_s"], rows[0]["step_s"])
    print(
        f"\nSFT step, {args.model} on {args.device}: batch {args.batch}, prompt {args.prompt_len}, "
        f"answer {args.answer_len}, K={args.k}"
    )
    print(
        f"{'path':8} {'dtype':9} {'step s':>8} {'tokens/s':>10} {'peak MB':>9} {'TFLOP/s':>8} "
        f"{'MFU':>6}"
    )
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(
            f"{r['path']:8} {r['dtype']:9} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f} "
            f"{r['peak_mem_mb']:9.0f} {r['tflops']:8.2f} {mfu:>6}"
        )
    if args.dtypes:
        print(f"{rows[1]['dtype']} base over {rows[0]['dtype']}: {1 / speedup:.2f}x faster")
    else:
        print(f"cached-prefix speed-up over naive: {speedup:.2f}x (target >= 1.5x)")
    write_json(
        args.out,
        "train_step.json",
        {
            "args": vars(args),
            "env": environment(args.device),
            "rows": rows,
            "speedup": speedup,
        },
    )


def _without_dtypes(argv: list[str]) -> list[str]:
    """`argv` less `--dtypes a b ...` and `--path x` (each child run gets its own)."""
    out, skip = [], False
    for arg in argv:
        if arg in ("--dtypes", "--path"):
            skip = True
            continue
        if skip and not arg.startswith("--"):
            continue
        skip = False
        out.append(arg)
    return out


if __name__ == "__main__":
    main()
