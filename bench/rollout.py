"""GRPO rollouts and steps: batched shared-prefix latent rollouts against per-sample loops and TRL.

Part 1, rollout throughput (answers/s) on the same B questions and the same latents
`Z = mu + sigma * eps` (drawn once, outside the timings), greedy answers of at most
`--max-answer-tokens` tokens:
  - batched (fork G): tokenize and encode the B prompts once, repeat the prompt cache G times,
    decode all B*G rows in one call (what `GRPOModule.rollout` does);
  - batched (re-encode): one call on B*G rows, each prompt tokenized and encoded G times
    (batching without the shared prefix);
  - loop: for each (question, Z) pair, tokenize and encode that prompt alone, then decode alone.
The decoded token ids of every batched row are compared with the loop's (same work, same answers).

Part 2, one GRPO step (rollout + loss + backward + optimiser step) on the same B prompts x G
samples: the latent `GRPOModule` (its settings from conf/stage/grpo.yaml, run by a
`lightning.Trainer` on the real `LRTDataModule` of the arith task limited to those B records,
timed per batch by a callback after one warm-up step) against TRL's `GRPOTrainer` on explicit
chain-of-thought (the prompt opens the thinking span as the `cot` mode does), LoRA on the same
base, reward `lrt.grading.grade` on arith, timed per optimiser step by a callback. Each step
runs in its own process, so peak memory (GPU allocator peak, or peak RSS on CPU) is its own.

TRL batch reading: TRL counts completions, not prompts. `per_device_train_batch_size` x
`gradient_accumulation_steps` = B*G completions = one generation batch of B prompts x G
generations, generated in one call and followed by one optimiser step, as the latent step does;
`--trl-micro-batch` (default G) sets the micro-batch of the loss/backward passes.

Defaults (SmolLM2-135M on the 2-core CPU: 11m47s with `--threads 1` while another 2-thread job
held the cores, 8 minutes of it the TRL step and its 10 GB peak RSS; less on an idle machine):
B=8, G=8, K=8, answers <= 8 tokens, TRL completions <= 256 tokens; the batched rollouts and the
latent step are the median of 3 repeats after a warm-up, the loop (64 calls, warmed up by the
batched runs) one run; TRL's step is timed after 1 warm-up step on a GPU and
is its first step on a CPU (`--trl-warmup`), with gradient checkpointing off (faster here, so
the ratio is conservative; `--trl-gradient-checkpointing` is TRL's default).

    python bench/rollout.py                                   # SmolLM2-135M on CPU
    python bench/rollout.py --model tiny_random --repeats 1   # smoke test, seconds
    python bench/rollout.py --skip-trl                        # part 1 and the latent step only
    python bench/rollout.py --skip-trl --exploration answer   # the paper's answer-token step
    python bench/rollout.py --model qwen3_1_7b_random         # on a GPU machine (bf16)
    python bench/rollout.py --rollout-batch                   # rollout_batch_size all vs 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
from common import (
    ROOT,
    environment,
    latent_lm,
    load,
    parser,
    peak_memory_mb,
    ratio,
    reset_peak,
    sync,
    timed,
    write_json,
)
from omegaconf import OmegaConf

from lrt.backbone import Backbone
from lrt.data.prompts import PromptConfig, format_prompt
from lrt.data.records import Record
from lrt.data.tasks import load_task
from lrt.lm.latent_lm import LatentLM
from lrt.reasoner import load_reasoner

TASK = "arith"
RESULT = "RESULT "  # prefix of the JSON line a child process prints


# --- shared set-up --------------------------------------------------------------------------


def data_config(questions: int) -> dict[str, Any]:
    """conf/data/arith.yaml with both splits limited to the benchmark's B questions."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / f"{TASK}.yaml"))
    cfg["train"]["limit"] = questions
    cfg["val"]["limit"] = questions
    return cfg


def question_batch(backbone: Backbone, questions: int) -> tuple[list[Record], list[str]]:
    """The first B training records of arith and their chat-templated prompts."""
    cfg = data_config(questions)
    records = load_task(TASK, "train", limit=questions, **(cfg["options"] or {}))
    prompt = PromptConfig.from_cfg(cfg["prompt"])
    system = backbone.config.system_prompt
    return records, [format_prompt(backbone.tokenizer, r, prompt, system) for r in records]


def stage_config(args: argparse.Namespace, rounds: int = 0) -> dict[str, Any]:
    """conf/stage/grpo.yaml with the benchmark's G, answer cap and no sample logging; with
    `rounds`, dynamic sampling of up to that many rounds of B candidates."""
    stage = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "stage" / "grpo.yaml"))
    if rounds:
        stage["dynamic_sampling"] = {"enabled": True, "round_size": None, "max_rounds": rounds}
    stage.update(
        batch_size=args.questions,
        num_generations=args.generations,
        max_answer_tokens=args.max_answer_tokens,
        log_samples_every_n_steps=0,
        exploration=args.exploration,
        temperature=args.temperature,
    )
    return stage


def build_lm(args: argparse.Namespace, backbone: Backbone) -> LatentLM:
    if args.reasoner:
        reasoner = load_reasoner(args.reasoner, backbone.name, backbone.hidden_size)
        return LatentLM(backbone, reasoner.to(backbone.device))
    torch.manual_seed(0)
    return latent_lm(backbone, args.k)


def child_result(payload: dict[str, Any]) -> None:
    print(RESULT + json.dumps(payload), flush=True)


# --- part 1: rollout throughput ---------------------------------------------------------------


def rollout_part(args: argparse.Namespace, lm: LatentLM, prompts: list[str]) -> dict[str, Any]:
    """Batched shared-prefix decoding against batched re-encoding and a per-sample loop."""
    g, cap = args.generations, args.max_answer_tokens
    n = len(prompts) * g
    stage = stage_config(args)
    ids, mask = lm.tokenize_prompts(prompts)
    with torch.no_grad():
        mu = lm.reason(lm.encode(ids, mask)).float()
    sigma = stage["sigma_scale"] * lm.backbone.embedding_rms()
    eps = torch.randn((n, *mu.shape[1:]), generator=torch.Generator().manual_seed(0))
    z = (mu.repeat_interleave(g, dim=0) + sigma * eps.to(mu.device)).to(lm.base.dtype)

    def fork() -> list[list[int]]:
        ids, mask = lm.tokenize_prompts(prompts)
        prefix = lm.encode(ids, mask).fork(g)
        return lm.generate(prefix, "lrt", latents=z, max_answer_tokens=cap).token_ids

    def reencode() -> list[list[int]]:
        ids, mask = lm.tokenize_prompts([p for p in prompts for _ in range(g)])
        prefix = lm.encode(ids, mask)
        return lm.generate(prefix, "lrt", latents=z, max_answer_tokens=cap).token_ids

    def loop() -> list[list[int]]:
        out = []
        for i in range(n):
            ids, mask = lm.tokenize_prompts([prompts[i // g]])
            prefix = lm.encode(ids, mask)
            gen = lm.generate(prefix, "lrt", latents=z[i : i + 1], max_answer_tokens=cap)
            out.append(gen.token_ids[0])
        return out

    rows = []
    answers: dict[str, list[list[int]]] = {}
    for name, fn in (("batched (fork G)", fork), ("batched (re-encode)", reencode)):
        seconds, answers[name] = timed(fn, args.device, args.repeats)
        rows.append({"path": name, "seconds": seconds, "runs": args.repeats})
    # The loop is B*G calls already warmed up by the batched paths: one timed run of it.
    sync(args.device)
    start = time.perf_counter()
    answers["loop"] = loop()
    sync(args.device)
    rows.append({"path": "loop", "seconds": time.perf_counter() - start, "runs": 1})
    for row in rows:
        row["answers_per_s"] = n / row["seconds"]
        row["mean_answer_tokens"] = sum(map(len, answers[row["path"]])) / n
    for row in rows:
        same = sum(a == b for a, b in zip(answers[row["path"]], answers["loop"], strict=True))
        row["identical_to_loop"] = same
    return {"answers": n, "rows": rows}


# --- part 2a: the latent GRPO step ------------------------------------------------------------


def latent_step_part(args: argparse.Namespace, lm: LatentLM, rounds: int = 0) -> dict[str, Any]:
    """`GRPOModule.training_step` under a Lightning Trainer: 1 warm-up + `repeats` timed steps;
    with `rounds`, under dynamic sampling. Counts the informative groups each step trains on
    (dynamic sampling keeps at most B of those it rolls out)."""
    import lightning as L

    from lrt.data.datamodule import LRTDataModule
    from lrt.data.settings import DataConfig
    from lrt.schema import typed
    from lrt.training.grpo import GRPOModule
    from lrt.training.settings import GRPOSettings

    module = GRPOModule(lm, TASK, typed(GRPOSettings, stage_config(args, rounds), "stage"))
    data = LRTDataModule(
        typed(DataConfig, data_config(args.questions * max(rounds, 1)), "data"),
        lm.tokenizer,
        lm.backbone.config.system_prompt,
        args.questions,
        seed=0,
    )
    rollout_times: list[float] = []
    rewards: list[float] = []
    answer_tokens: list[float] = []
    device = args.device
    original_rollout = module.rollout

    def rollout(*a: Any, **kw: Any) -> Any:
        sync(device)
        start = time.perf_counter()
        out = original_rollout(*a, **kw)
        sync(device)
        rollout_times.append(time.perf_counter() - start)
        rewards.append(float(out.rewards.mean()))
        answer_tokens.append(sum(out.generation.num_generated) / len(out.rewards))
        g = args.generations
        informative_now[-1] += int((~out.zero_std.to(out.real.device) & out.real[::g]).sum())
        return out

    informative_now: list[int] = [0]

    module.rollout = rollout  # type: ignore[method-assign]

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_train_batch_start(self, *_: Any) -> None:
            sync(device)
            informative_now.append(0)
            self.start = time.perf_counter()

        def on_train_batch_end(self, *_: Any) -> None:
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_steps=1 + args.repeats,
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision="bf16-mixed" if cuda else "32-true",
            logger=False,
            callbacks=[timer],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            use_distributed_sampler=False,
            default_root_dir=root,
        )
        reset_peak(args.device)
        trainer.fit(module, datamodule=data)
    steps = timer.times[1:]  # the first batch is the warm-up
    median = sorted(steps)[len(steps) // 2]
    trained = [min(n, args.questions) for n in informative_now[2:]]  # timed steps only
    return {
        "path": f"GRPO {args.exploration}" + (f" dyn x{rounds}" if rounds else ""),
        "informative_groups": sum(trained) / max(len(trained), 1),
        "s_per_informative_group": sum(steps) / sum(trained) if sum(trained) else None,
        "step_s": median,
        "rollout_s": sorted(rollout_times[1:])[len(steps) // 2],
        "timed_steps": len(steps),
        "warmup_steps": 1,
        "first_step_s": timer.times[0],
        "peak_mem_mb": peak_memory_mb(args.device),
        "tokens_per_sample": sum(answer_tokens) / len(answer_tokens),
        "reward_mean": sum(rewards) / len(rewards),
    }


def latent_main(args: argparse.Namespace) -> None:
    backbone = load(args.model, args.device)
    lm = build_lm(args, backbone)
    _, prompts = question_batch(backbone, args.questions)
    result = {"k": lm.reasoner.num_latents, "rollout": rollout_part(args, lm, prompts)}
    result["step"] = latent_step_part(args, lm)
    if args.dynamic_rounds:
        result["dynamic_step"] = latent_step_part(args, lm, args.dynamic_rounds)
    child_result(result)


# --- rollout batch: one step's rollouts decoded together or a question at a time --------------


def rollout_batch_main(args: argparse.Namespace) -> None:
    """One GRPO step's rollouts (`pool.batch_rollouts` on the B questions, micro_batch_size 1,
    as paper_grpo has it) with rollout_batch_size all (B x G rows a call) and 1 (G rows a
    call): answer tokens per second of each, their ratio, and whether their tokens agree."""
    from types import SimpleNamespace

    from lrt.schema import typed
    from lrt.training.grpo import GRPOModule
    from lrt.training.pool import batch_rollouts
    from lrt.training.settings import GRPOSettings

    backbone = load(args.model, args.device)
    lm = build_lm(args, backbone)
    records, prompts = question_batch(backbone, args.questions)
    ids, mask = lm.tokenize_prompts(prompts)
    b = len(records)
    batch = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device),
             "index": torch.arange(b), "slot": torch.arange(b)}  # fmt: skip
    rows = {}
    for size in (None, 1):
        stage = stage_config(args) | {"micro_batch_size": 1, "rollout_batch_size": size}
        module = GRPOModule(lm, TASK, typed(GRPOSettings, stage, "stage"))
        module.trainer = SimpleNamespace(
            datamodule=SimpleNamespace(train_records=records), world_size=1
        )
        seconds, rollouts = timed(lambda m=module: batch_rollouts(m, batch, 0), args.device,
                                  args.repeats)  # fmt: skip
        tokens = [t for r in rollouts for t in r.generation.token_ids]
        rows["all" if size is None else str(size)] = {
            "seconds": seconds,
            "answer_tokens": sum(len(t) for t in tokens),
            "tokens_per_s": sum(len(t) for t in tokens) / seconds,
            "token_ids": tokens,
        }
    same = rows["all"].pop("token_ids") == rows["1"].pop("token_ids")
    speedup = ratio(rows["all"]["tokens_per_s"], rows["1"]["tokens_per_s"])
    print(
        f"\nOne GRPO step's rollouts, {args.model} on {args.device}: B={b} x G={args.generations}, "
        f"{args.exploration} exploration, answers <= {args.max_answer_tokens} tokens, "
        f"micro_batch_size 1; median of {args.repeats} after a warm-up"
    )
    print(f"{'rollout_batch_size':>18} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    for name, r in rows.items():
        print(f"{name:>18} {r['seconds']:8.3f} {r['answer_tokens']:7d} {r['tokens_per_s']:9.1f}")
    print(f"all over 1: {speedup:.2f}x; same tokens: {'yes' if same else 'NO'}")
    write_json(
        args.out,
        "rollout_batch.json",
        {"args": vars(args), "env": environment(args.device), "rows": rows,
         "speedup": speedup, "same_tokens": same},
    )  # fmt: skip


# --- part 2b: one TRL GRPOTrainer step on explicit chain-of-thought ------------------------------


def trl_main(args: argparse.Namespace) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lrt.grading import grade

    backbone = load(args.model, args.device)
    records, prompts = question_batch(backbone, args.questions)
    think_open = backbone.config.think_open
    rows = zip(prompts, records, strict=True)
    dataset = Dataset.from_list([{"prompt": p + think_open, "answer": r.answer} for p, r in rows])
    rewards: list[float] = []

    def correct(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        pairs = zip(completions, answer, strict=True)
        scores = [float(grade(TASK, c, Record("", "", a))) for c, a in pairs]
        rewards.extend(scores)
        return scores

    completions = args.questions * args.generations
    micro = args.trl_micro_batch or args.generations
    if completions % micro:
        raise SystemExit(f"--trl-micro-batch {micro} must divide B*G = {completions}")
    cuda = args.device.startswith("cuda")
    warmup = args.trl_warmup if args.trl_warmup is not None else int(cuda)
    device = args.device

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=completions // micro,
            num_generations=args.generations,
            max_completion_length=args.trl_max_completion,
            max_steps=warmup + 1,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            bf16=cuda and backbone.model.dtype == torch.bfloat16,
            gradient_checkpointing=args.trl_gradient_checkpointing,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=backbone.model,
            reward_funcs=[correct],
            args=config,
            train_dataset=dataset,
            processing_class=backbone.tokenizer,
            peft_config=LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"
            ),
            callbacks=[timer],
        )
        generate_times: list[float] = []
        lengths: list[float] = []
        original_generate = trainer._generate

        def generate(prompts: list) -> Any:
            sync(device)
            start = time.perf_counter()
            out = original_generate(prompts)
            sync(device)
            generate_times.append(time.perf_counter() - start)
            lengths.append(sum(len(ids) for ids in out[1]) / len(out[1]))
            return out

        trainer._generate = generate  # type: ignore[method-assign]
        reset_peak(args.device)
        trainer.train()
    child_result(
        {
            "path": "TRL GRPO (CoT)",
            "step_s": timer.times[-1],
            "rollout_s": generate_times[-1],
            "timed_steps": 1,
            "warmup_steps": warmup,
            "first_step_s": timer.times[0],
            "peak_mem_mb": peak_memory_mb(args.device),
            "tokens_per_sample": lengths[-1],
            "reward_mean": sum(rewards[-completions:]) / completions,
            "per_device_train_batch_size": micro,
            "gradient_accumulation_steps": completions // micro,
            "generation_batch_size": config.generation_batch_size,
            "gradient_checkpointing": args.trl_gradient_checkpointing,
            "lora": "r=16, alpha=32, all-linear",
        }
    )


# --- driver -----------------------------------------------------------------------------------


def run_child(part: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--part", part]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"the {part} part failed (exit {proc.returncode})")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith(RESULT))
    return json.loads(line[len(RESULT) :])


def report(args: argparse.Namespace, latent: dict[str, Any], trl: dict[str, Any] | None) -> None:
    b, g, n = args.questions, args.generations, args.questions * args.generations
    rows = latent["rollout"]["rows"]
    print(
        f"\nGRPO rollout, {args.model} on {args.device}: B={b} questions x G={g} latents "
        f"(K={latent['k']}), greedy answers <= {args.max_answer_tokens} tokens, same Z everywhere"
    )
    print(
        f"{'path':20} {'seconds':>8} {'runs':>5} {'answers/s':>10} {'tokens':>7} "
        f"{'same as loop':>13}"
    )
    for r in rows:
        print(
            f"{r['path']:20} {r['seconds']:8.3f} {r['runs']:5d} {r['answers_per_s']:10.1f} "
            f"{r['mean_answer_tokens']:7.2f} {r['identical_to_loop']:>8d}/{n}"
        )
    same = all(r["identical_to_loop"] == n for r in rows)
    print(
        f"answers identical to the per-sample loop: {'yes, all' if same else 'NO, not all'} "
        f"{n} rows of every batched path (token ids compared)"
    )
    rollout_speedup = ratio(rows[0]["answers_per_s"], rows[2]["answers_per_s"])
    print(f"batched shared-prefix rollout over the loop: {rollout_speedup:.2f}x (target >= 3x)")

    steps = [latent["step"]] + ([latent["dynamic_step"]] if "dynamic_step" in latent else [])
    steps += [trl] if trl else []
    print(
        f"\nGRPO step (rollout + loss + backward + optimiser step), {b} prompts x {g} samples; "
        "time per step, the rollout part of it, peak memory of the step's own process"
    )
    print(
        f"{'path':15} {'step s':>9} {'rollout s':>10} {'timed':>6} {'peak MB':>9} "
        f"{'tokens':>7} {'reward':>7}"
    )
    for r in steps:
        print(
            f"{r['path']:15} {r['step_s']:9.3f} {r['rollout_s']:10.3f} {r['timed_steps']:>6d} "
            f"{r['peak_mem_mb']:9.0f} {r['tokens_per_sample']:7.1f} {r['reward_mean']:7.3f}"
        )
    for r in steps[: 2 if "dynamic_step" in latent else 1]:
        print(
            f"{r['path']}: {r['informative_groups']:.2f} informative groups per step, "
            + (
                f"{r['s_per_informative_group']:.3f} s per informative group"
                if r["s_per_informative_group"]
                else "none to time per informative group"
            )
        )
    latent_step = latent["step"]
    print(
        f"GRPO {args.exploration}: GRPOModule.training_step under lightning.Trainer, median of "
        f"{latent_step['timed_steps']} steps after {latent_step['warmup_steps']} warm-up "
        f"(first step {latent_step['first_step_s']:.3f} s)"
    )
    step_speedup = None
    if trl:
        when = (
            f"after {trl['warmup_steps']} warm-up step(s)"
            if trl["warmup_steps"]
            else "its first step (no warm-up)"
        )
        print(
            f"TRL GRPO: per_device_train_batch_size={trl['per_device_train_batch_size']} "
            f"completions x gradient_accumulation_steps={trl['gradient_accumulation_steps']} = "
            f"generation batch {trl['generation_batch_size']} = {b} prompts x {g} generations, "
            f"one generate call and one optimiser step; LoRA {trl['lora']}; completions <= "
            f"{args.trl_max_completion} tokens, sampled at TRL's temperature 1.0; gradient "
            f"checkpointing {'on' if trl['gradient_checkpointing'] else 'off'}; timed {when}"
        )
        step_speedup = ratio(trl["step_s"], latent_step["step_s"])
        print(f"GRPO {args.exploration} step over TRL's step: {step_speedup:.2f}x (target >= 5x)")
    write_json(
        args.out,
        "rollout.json",
        {
            "args": vars(args),
            "env": environment(args.device),
            "rollout": latent["rollout"],
            "rollout_speedup": rollout_speedup,
            "steps": steps,
            "step_speedup": step_speedup,
        },
    )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--questions", "--B", type=int, default=8, help="questions per batch (B)")
    p.add_argument("--generations", "--G", type=int, default=8, help="samples per question (G)")
    p.add_argument("--k", type=int, default=8, help="latent tokens of a fresh reasoner")
    p.add_argument("--reasoner", default=None, help="a trained reasoner folder (replaces --k)")
    p.add_argument("--max-answer-tokens", type=int, default=8)
    p.add_argument(
        "--exploration",
        choices=["latent", "answer", "both"],
        default="latent",
        help="what the GRPO step samples (answer/both back-propagate through the base)",
    )
    p.add_argument(
        "--temperature", type=float, default=None, help="answer sampling (default 0, 1 for answer)"
    )
    p.add_argument("--trl-max-completion", type=int, default=256)
    p.add_argument(
        "--trl-micro-batch", type=int, default=None, help="completions per TRL backward (G)"
    )
    p.add_argument(
        "--trl-warmup", type=int, default=None, help="untimed TRL steps (1 on GPU, 0 on CPU)"
    )
    p.add_argument(
        "--trl-gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False
    )
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument(
        "--dynamic-rounds",
        type=int,
        default=0,
        help="also time a step with dynamic sampling of up to this many rounds of B questions",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--part", choices=["all", "latent", "trl"], default="all")
    p.add_argument(
        "--rollout-batch",
        action="store_true",
        help="only time one step's rollouts at rollout_batch_size all vs 1 (micro_batch_size 1)",
    )
    args = p.parse_args()
    if args.temperature is None:
        args.temperature = 0.0 if args.exploration == "latent" else 1.0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rollout_batch:
        rollout_batch_main(args)
    elif args.part == "latent":
        latent_main(args)
    elif args.part == "trl":
        trl_main(args)
    else:
        latent = run_child("latent")
        trl = None if args.skip_trl else run_child("trl")
        report(args, latent, trl)


if __name__ == "__main__":
    main()
