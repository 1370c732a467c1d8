"""Our batched decoder against transformers' `generate()`, and what dropping finished rows saves.

Same base, same prompts (the arith test questions, chat-templated as `direct` asks them),
greedy, one batch: `generate()` with `max_new_tokens`, our decoder in `direct` mode with the
same cap, with finished rows dropped from the batch (the default) and kept to the end (as
`generate()` keeps them), with every step on the host (`Decoder.host_steps`: a transfer and a
Python call per row each token) against the rows' state on the device (the default), and
`cot@budget` both ways of dropping (`generate()` has no budget forcing).
Prints seconds per question, the ratios, and how many rows decode the same tokens as
`generate()`.

    python bench/decoding.py                       # SmolLM2-135M on CPU, 64 questions
    python bench/decoding.py --questions 128 --max-new-tokens 512 --device cuda
"""

from __future__ import annotations

import time

import torch
from common import environment, load, parser, ratio, sync, write_json

from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.tasks import load_task
from lrt.evaluation.predict import prompt_variant
from lrt.lm.decoding import Decoder
from lrt.lm.latent_lm import LatentLM
from lrt.modes import DecodeConfig


def until_end(ids: list[int], ends: set[int]) -> list[int]:
    """`ids` up to and including the first end token."""
    for n, token in enumerate(ids):
        if token in ends:
            return ids[: n + 1]
    return ids


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--budget", type=int, default=256, help="cot's thinking budget")
    args = p.parse_args()

    backbone = load(args.model, args.device)
    lm = LatentLM(backbone)
    records = load_task("arith", "test", limit=args.questions)
    variant = prompt_variant(lm, "direct")
    texts = [format_prompt(lm.tokenizer, r, PromptConfig(), *variant) for r in records]
    ids, mask = lm.tokenize_prompts(texts)
    ends = set(lm.eos_ids)
    n = len(records)

    def ours(
        mode: str, prunes: bool, cap: int, budget: int = 0, host: bool = False
    ) -> tuple[float, list[list[int]]]:
        Decoder.prunes, Decoder.host_steps = prunes, host
        sync(args.device)
        start = time.perf_counter()
        prefix = lm.encode(ids, mask)
        gen = lm.generate(prefix, mode, max_answer_tokens=cap, budget=budget)
        sync(args.device)
        return time.perf_counter() - start, gen.token_ids

    def reference() -> tuple[float, list[list[int]]]:
        sync(args.device)
        start = time.perf_counter()
        out = backbone.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(ends),
            pad_token_id=lm.tokenizer.pad_token_id,
        )
        sync(args.device)
        return time.perf_counter() - start, out[:, ids.shape[1] :].tolist()

    with torch.no_grad():
        reference()  # warm-up: first-call costs
        t_ref, ref_ids = reference()
        t_pruned, pruned_ids = ours("direct", True, args.max_new_tokens)
        t_kept, _ = ours("direct", False, args.max_new_tokens)
        t_host, host_ids = ours("direct", True, args.max_new_tokens, host=True)
        cot = DecodeConfig(max_answer_tokens=32, budget=args.budget)
        t_cot, _ = ours("cot", True, cot.max_answer_tokens, cot.budget)
        t_cot_kept, _ = ours("cot", False, cot.max_answer_tokens, cot.budget)
    Decoder.prunes, Decoder.host_steps = True, False
    same = sum(
        until_end(a, ends) == until_end(b, ends) for a, b in zip(pruned_ids, ref_ids, strict=True)
    )
    rows = [
        ("generate() (direct prompt)", t_ref),
        ("ours, direct, finished rows dropped", t_pruned),
        ("ours, direct, finished rows kept", t_kept),
        ("ours, direct, every step on the host", t_host),
        (f"ours, cot@{args.budget}, finished rows dropped", t_cot),
        (f"ours, cot@{args.budget}, finished rows kept", t_cot_kept),
    ]
    print(f"\n{args.model} on {args.device}, {n} arith questions in one batch, greedy")
    for name, t in rows:
        print(f"{name:44s} {t / n:8.3f} s/question")
    ratios = {
        "generate() / ours (direct)": ratio(t_ref, t_pruned),
        "kept / dropped (direct)": ratio(t_kept, t_pruned),
        "host steps / device rows (direct)": ratio(t_host, t_pruned),
        f"kept / dropped (cot@{args.budget})": ratio(t_cot_kept, t_cot),
    }
    for name, value in ratios.items():
        print(f"{name:44s} {value:8.2f}")
    print(f"rows with generate()'s tokens: {same} of {n}")
    assert host_ids == pruned_ids, "the host steps and the device rows decoded different tokens"
    write_json(
        args.out,
        "decoding.json",
        {
            "args": vars(args),
            "environment": environment(args.device),
            "seconds_per_question": {name: t / n for name, t in rows},
            "ratios": ratios,
            "rows_matching_generate": same,
            "questions": n,
        },
    )


if __name__ == "__main__":
    main()
