"""Inference latency and tokens per question: nothink, lrt at several K, cot at several budgets.

Same base, same questions (GSM8K test from the shared data by default), batch sizes 1 and 16
(at batch size 1 only the first `--batch1-questions`, since decoding one question at a time is
what makes the run long: cot@1024 alone took 10 minutes for 16 questions on the shared CPU).
Prints a table and the ratios cot/lrt and lrt/nothink, and writes bench/inference.json.

    python bench/inference.py                               # SmolLM2-135M on CPU
    python bench/inference.py --model qwen3_1_7b_random --questions 64   # GPU machine
    python bench/inference.py --reasoner outputs/sft/arith/<run>/reasoner/final --task arith

With no --reasoner, the lrt rows use freshly initialised reasoners of each K: their latency is
that of a trained one with the same K, but their answers (and so answer lengths) are not.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from common import ROOT, environment, latent_lm, load, parser, ratio, write_json

from lrt.data.prompts import PromptConfig
from lrt.data.tasks import load_task
from lrt.evaluation import accuracy, mean_tokens, predict
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig
from lrt.reasoner import load_reasoner

WARM_UP_TOKENS = 4


def data_path(task: str) -> str | None:
    if task == "arith":
        return None
    base = Path(os.environ.get("LRT_DATA_DIR", ROOT / ".." / "shared" / "data"))
    return str(base / {"gsm8k": "gsm8k/test.jsonl", "math": "math500/test.jsonl"}[task])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--task", default="gsm8k", choices=["gsm8k", "math", "arith"])
    p.add_argument("--questions", type=int, default=16)
    p.add_argument(
        "--batch1-questions",
        type=int,
        default=4,
        help="questions timed at batch size 1 (the first ones; one at a time is what takes long)",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--max-answer-tokens", type=int, default=32)
    p.add_argument("--reasoner", default=None, help="a trained reasoner folder (replaces --ks)")
    args = p.parse_args()

    backbone = load(args.model, args.device)
    records = load_task(args.task, "test", path=data_path(args.task), limit=args.questions)
    prompt = PromptConfig()
    if args.reasoner:
        reasoner = load_reasoner(args.reasoner, backbone.name, backbone.hidden_size)
        lrt_models = {f"lrt K={reasoner.num_latents}": LatentLM(backbone, reasoner.to(args.device))}
    else:
        lrt_models = {f"lrt K={k}": latent_lm(backbone, k) for k in args.ks}
    plain = LatentLM(backbone)
    runs: list[tuple[str, LatentLM, str, DecodeConfig]] = [
        ("nothink", plain, "nothink", DecodeConfig(max_answer_tokens=args.max_answer_tokens))
    ]
    runs += [
        (name, lm, "lrt", DecodeConfig(max_answer_tokens=args.max_answer_tokens))
        for name, lm in lrt_models.items()
    ]
    runs += [
        (f"cot@{b}", plain, "cot", DecodeConfig(max_answer_tokens=args.max_answer_tokens, budget=b))
        for b in args.budgets
    ]
    rows = []
    for batch in args.batch_sizes:
        timed = records[: args.batch1_questions] if batch == 1 else records
        for name, lm, mode, decode in runs:
            # a warm-up batch decoding only a few tokens (first-call costs are in the prefill and
            # the first steps; a full cot@1024 warm-up at batch 16 would double the run), then
            # the timed pass over the questions
            warm_up = replace(decode, max_answer_tokens=WARM_UP_TOKENS, budget=WARM_UP_TOKENS)
            predict(lm, args.task, records[:batch], prompt, mode, warm_up, batch_size=batch)
            preds = predict(lm, args.task, timed, prompt, mode, decode, batch_size=batch)
            latency = sum(x.time_per_question_s for x in preds) / len(preds)
            rows.append(
                {
                    "batch": batch,
                    "run": name,
                    "latency_s": latency,
                    "tokens": mean_tokens(preds),
                    "accuracy": accuracy(preds),
                }
            )
            print(
                f"batch {batch:3d}  {name:12s} {latency:8.3f} s/q  {mean_tokens(preds):7.1f} tok  "
                f"acc {accuracy(preds):.3f}",
                flush=True,
            )

    print(
        f"\n{args.model} on {args.device}, {len(records)} {args.task} questions "
        f"({min(args.batch1_questions, len(records))} of them at batch size 1)"
    )
    print(f"{'batch':>5} {'run':12} {'s/question':>10} {'tokens':>7} {'accuracy':>8}")
    for r in rows:
        print(
            f"{r['batch']:5d} {r['run']:12} {r['latency_s']:10.3f} {r['tokens']:7.1f} "
            f"{r['accuracy']:8.3f}"
        )
    ratios = []
    for batch in args.batch_sizes:
        by = {r["run"]: r["latency_s"] for r in rows if r["batch"] == batch}
        for name in lrt_models:
            for b in args.budgets:
                ratios.append(
                    {
                        "batch": batch,
                        "ratio": f"cot@{b} / {name}",
                        "value": ratio(by[f"cot@{b}"], by[name]),
                    }
                )
            ratios.append(
                {
                    "batch": batch,
                    "ratio": f"{name} / nothink",
                    "value": ratio(by[name], by["nothink"]),
                }
            )
    print("\nlatency ratios (targets: lrt/nothink <= 1.3, cot@512/lrt >= 10)")
    for r in ratios:
        print(f"batch {r['batch']:3d}  {r['ratio']:28s} {r['value']:7.2f}")
    write_json(
        args.out,
        "inference.json",
        {
            "args": vars(args),
            "env": environment(args.device),
            "rows": rows,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
