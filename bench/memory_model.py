"""A memory model: the per-GPU peak of every `paper_*` config, term by term, for N GPUs.

Nothing here runs a paper model: the base's shape comes from its public config.json (the hub
is out of reach), parameter counts from building the modules on the meta device (no memory),
and each term from reading the code path that allocates it (named beside each term below).
`bench/memory_check.py` runs a real SFT step and a real answer-mode GRPO loss pass on CPU
at small scale and compares the same formulas, evaluated there in float32, with their peaks.

    OMP_NUM_THREADS=1 python bench/memory_model.py            # the table for all paper configs
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from common import ROOT, parser, write_json
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from lrt.lm import logprobs
from lrt.reasoner import build_reasoner

GiB = 2**30
MODELS = ("qwen3_1_7b", "qwen3_4b", "qwen3_8b", "deepseek_r1_distill_qwen_1_5b")
STRATEGIES = ("ddp", "fsdp")
GPU_COUNTS = (1, 2, 4, 8)
PROMPT_TOKENS = 512
"""Prompt length assumed when `data.max_prompt_tokens` is null (the paper configs): a long
competition problem in a chat template; the prompt's terms are small beside the answer's."""
MARKER_TOKENS = 5
"""Thinking-span markers assumed for hub models (no tokenizer offline): Qwen3's `<think>\\n`
is 2 tokens and `\\n</think>\\n\\n` 3."""

PUBLIC_SHAPES: dict[str, dict[str, Any]] = {
    # config.json of each hub model (model_type, hidden, intermediate, layers, heads, kv heads,
    # head_dim, vocab, tied embeddings).
    "Qwen/Qwen3-1.7B": dict(model_type="qwen3", hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        vocab_size=151936, tie_word_embeddings=True),
    "Qwen/Qwen3-4B": dict(model_type="qwen3", hidden_size=2560, intermediate_size=9728,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        vocab_size=151936, tie_word_embeddings=True),
    "Qwen/Qwen3-8B": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        vocab_size=151936, tie_word_embeddings=False),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": dict(model_type="qwen2", hidden_size=1536,
        intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    "Qwen/Qwen3-Embedding-0.6B": dict(model_type="qwen3", hidden_size=1024,
        intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151669, tie_word_embeddings=True),
}  # fmt: skip


@dataclass
class Shape:
    """What the terms need of a transformer: its widths and its parameter count."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    qk_norm: bool
    """Qwen3 normalises q and k per head (in float32, which autograd keeps); Llama/Qwen2 not."""
    params: int
    layer_params: int

    @classmethod
    def of(cls, config: Any) -> Shape:
        """From a transformers config; parameters counted on a model built on the meta device."""
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        layer = model.get_decoder().layers[0]
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None)
            or config.hidden_size // config.num_attention_heads,
            vocab=config.vocab_size,
            qk_norm=config.model_type == "qwen3",
            params=sum(p.numel() for p in model.parameters()),
            layer_params=sum(p.numel() for p in layer.parameters()),
        )


def hf_config(model: dict[str, Any]) -> Any:
    """The transformers config of a `model` config group: the public table for hub models, the
    random_config of `source: random`, or the config.json of a local folder."""
    if model["name"] in PUBLIC_SHAPES:
        raw = dict(PUBLIC_SHAPES[model["name"]])
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    if model.get("source") == "random":
        raw = {"model_type": "qwen3", "vocab_size": 259, **model["random_config"]}
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    return AutoConfig.from_pretrained(model["path"])


def reasoner_params(reasoner: dict[str, Any], hidden: int) -> int:
    """The reasoner's parameters, counted on one built on the meta device. The paper's
    `pretrained` body (Qwen3-Embedding-0.6B, embedding dropped) is rebuilt from its public
    shape, the way a saved reasoner is rebuilt from its recorded `body_config`."""
    raw = {k: v for k, v in reasoner.items() if k != "defaults"}
    if raw.get("arch") == "pretrained" and raw.get("init_from") in PUBLIC_SHAPES:
        raw["body_config"] = PUBLIC_SHAPES[raw["init_from"]]
    with torch.device("meta"):
        built = build_reasoner(raw, "base", hidden, 1.0)
    return sum(p.numel() for p in built.parameters())


@dataclass
class Setup:
    """One stage of one config on one rank: everything the terms depend on."""

    stage: str  # sft | grpo
    base: Shape
    body: Shape | None
    """The pretrained reasoner's body (its activations), None for the small `query` reasoner."""
    reasoner_params: int
    latents: int
    prompt: int
    answer: int
    markers: int
    batch: int
    """Questions per optimiser step, all ranks."""
    micro: int
    rollout: int | None
    generations: int = 1
    beta: float = 0.0
    checkpointing: bool = True
    dtype_bytes: int = 2
    autocast: bool = True
    """bf16-mixed: the reasoner's float32 weights also live as bf16 copies during a step."""
    chunk: int = logprobs.CHUNK


def kv_bytes(s: Shape, e: int) -> int:
    """Keys and values of one token in one layer (DynamicCache, the base's dtype)."""
    return 2 * s.kv_heads * s.head_dim * e


def saved_per_token(s: Shape, e: int, trainable: bool = False) -> float:
    """What autograd keeps of one decoder layer per query token (frozen weights: linears keep
    nothing of their input): the float32 input of both RMSNorms, of q_norm/k_norm (Qwen3),
    SDPA's query, output and log-sum-exp, and the MLP's gate, silu(gate) and up. A trainable
    layer also keeps each linear's input."""
    d, i, h = s.hidden, s.intermediate, s.heads * s.head_dim
    kept = 8 * d + 2 * e * h + 4 * s.heads + 3 * e * i
    if s.qk_norm:
        kept += 4 * (h + s.kv_heads * s.head_dim)
    if trainable:
        kept += e * (2 * d + h + i)
    return kept


def attention_kv(s: Shape, e: int) -> int:
    """SDPA's saved keys and values per key token: repeat_kv's copy to every query head (the
    cache's own tensor when there is one head per kv head)."""
    return 2 * e * s.heads * s.head_dim


def backward_pass(
    u: Setup, rows: int, answer: int, prefix_tokens: int, reasoner_rows: int
) -> dict[str, float]:
    """Held and working-set terms of one pass back-propagated through the base: `rows` rows
    of [markers, K latents, answer] on a prompt cache of `prefix_tokens` (latent_lm.py
    `answer_logprobs`, checkpointing.py, logprobs.py)."""
    b, e, s = u.base, u.dtype_bytes, u.markers + u.latents + answer
    t = prefix_tokens + s
    per_layer = rows * (s * saved_per_token(b, e) + t * attention_kv(b, e) + s * t * e)
    cache = b.layers * rows * kv_bytes(b, e)
    terms = {
        "prompt cache (fork, or checkpoint snapshots)": cache * prefix_tokens,
        # Checkpointed, each layer drops what it appended once read: one layer's at a time.
        "extended cache [prompt+span+answer]": cache * t / (b.layers if u.checkpointing else 1),
        "attention mask (bool)": rows * s * t,
        "decoder output + final norm + flat answer states": rows
        * b.hidden
        * (s * (e + 4) + answer * e),
    }
    if u.checkpointing:
        terms["checkpointed layer inputs"] = b.layers * rows * s * b.hidden * e
        layer_ws = per_layer + rows * s * 2 * e * (b.intermediate + b.hidden)
    else:
        terms["saved activations, every layer"] = b.layers * per_layer
        layer_ws = rows * s * 2 * e * (b.intermediate + b.hidden)
    head = min(u.chunk, rows * answer) * b.vocab * (e + (4 if e != 4 else 0) + 12)
    terms.update(reasoner_activations(u, reasoner_rows))
    terms["latents Z (float32, base dtype)"] = rows * u.latents * b.hidden * (4 + e)
    terms["working set: max(layer recompute+backward, LM-head chunk)"] = max(layer_ws, head)
    return terms


def reasoner_activations(u: Setup, rows: int) -> dict[str, float]:
    """The reasoner's saved activations for `rows` questions: the pretrained body runs over
    its K inputs (hadamard layout); the small query reasoner's are left out (a few MB)."""
    if u.body is None:
        return {}
    e = 2 if u.autocast else 4
    k = u.latents
    per_layer = k * (saved_per_token(u.body, e, trainable=True) + attention_kv(u.body, e))
    return {"reasoner activations": rows * u.body.layers * per_layer}


def forward_ws(s: Shape, e: int, rows: int, queries: int, keys: int) -> float:
    """One layer's no-grad forward transient: MLP gate/up/product, residual and norm, q and
    output, repeat_kv's keys and values (prefill only) and SDPA's float mask."""
    per_query = (
        3 * e * s.intermediate + 2 * e * s.hidden + 4 * s.hidden + 2 * e * s.heads * s.head_dim
    )
    repeat = keys * attention_kv(s, e) if queries > 1 else 0
    return rows * (queries * per_query + repeat + queries * keys * e)


def persistent(u: Setup, n: int, strategy: str) -> dict[str, float]:
    """Held through the whole run: base weights (fsdp: decoder layers sharded, embedding and
    head whole, plus two gathered layers), the reasoner's float32 weights, gradients (kept from
    one step's backward to the next zero_grad) and AdamW's two moments (optim.py), ddp's
    gradient buckets, bf16-mixed's cached bf16 weight copies, GRPO's reference reasoner."""
    b, e, p = u.base, u.dtype_bytes, u.reasoner_params
    sharded = strategy == "fsdp" and n > 1
    decoder = b.layers * b.layer_params
    base = (decoder / n + 2 * b.layer_params + (b.params - decoder)) if sharded else b.params
    share = n if sharded else 1
    terms = {
        "base weights": base * e,
        "reasoner weights + grads + AdamW (fp32)": 16 * p / share,
    }
    if strategy == "ddp" and n > 1:
        terms["ddp gradient buckets"] = 4 * p
    if u.autocast:
        terms["autocast bf16 copy of reasoner weights"] = 2 * p
    if u.stage == "grpo" and u.beta > 0:
        terms["reference reasoner (fp32, not sharded)"] = 4 * p
    return terms


def phases(u: Setup, n: int) -> dict[str, dict[str, float]]:
    """The step's phases on one of `n` ranks, each a dict of terms alive at its peak."""
    b, e, g = u.base, u.dtype_bytes, u.generations
    if u.stage == "sft":
        return {"sft step": backward_pass(u, u.micro, u.answer, u.prompt, u.micro)}
    share = -(-u.batch // n)
    per_batch = min(u.rollout or share, share)
    rows, span = per_batch * g, u.markers + u.latents
    full = u.prompt + span + u.answer
    prompt_cache = b.layers * u.prompt * kv_bytes(b, e)
    latents = rows * u.latents * b.hidden * (4 + e)
    held_before = {  # earlier rollout batches of this step, waiting for the loss passes
        "earlier rollout batches (prompt cache, fp32 latents)": (share - per_batch)
        * (prompt_cache + g * u.latents * b.hidden * 4)
    }
    rollout = {
        **held_before,
        "prompt cache (rollout.prefix)": per_batch * prompt_cache,
        "decode cache [prompt+span+answer] x G": rows * full * b.layers * kv_bytes(b, e),
        "cache cat transient (one layer)": rows * full * kv_bytes(b, e),
        "latents Z (float32 x G, base dtype) + span embeds": latents + rows * span * b.hidden * e,
        "decode logits + sampling (fp32)": rows * b.vocab * (e + 16),
    }
    prefill = {
        **held_before,
        "prompt cache (rollout.prefix)": per_batch * prompt_cache,
        # generate(repeats=G) repeats the prompt cache; the span's forward replaces it layer
        # by layer, so at the end of the prefill one layer's repeat is left beside it.
        "prompt cache x G, one layer (replaced by the span's)": rows * prompt_cache / b.layers,
        "span cache [prompt+span] x G": rows * (u.prompt + span) * b.layers * kv_bytes(b, e),
        "latents Z (float32 x G, base dtype) + span embeds": latents + rows * span * b.hidden * e,
        "span prefill forward (one layer)": forward_ws(b, e, rows, span, u.prompt + span),
    }
    mrows = u.micro * g
    held = {
        "rollouts held (prompt caches, fp32 latents x G)": share
        * (prompt_cache + g * u.latents * b.hidden * 4)
    }
    loss = {**held, **backward_pass(u, mrows, u.answer, u.prompt, u.micro)}
    out = {"rollout prefill": prefill, "rollout decode": rollout, "loss pass": loss}
    if u.beta > 0:
        t = u.prompt + span + u.answer
        out["reference pass"] = {
            **held,
            "cache [prompt+span+answer] x G (no grad)": mrows * t * b.layers * kv_bytes(b, e),
            "forward (one layer) or LM-head chunk": max(
                forward_ws(b, e, mrows, span + u.answer, t),
                min(u.chunk, mrows * u.answer) * b.vocab * (e + 8),
            ),
        }
    return out


def predict(u: Setup, n: int, strategy: str) -> dict[str, Any]:
    """Per-rank peak: persistent terms plus the largest phase."""
    fixed = persistent(u, n, strategy)
    steps = phases(u, n)
    worst = max(steps, key=lambda k: sum(steps[k].values()))
    total = sum(fixed.values()) + sum(steps[worst].values())
    return {"persistent": fixed, "phases": steps, "peak_phase": worst, "total": total}


def compose_config(experiment: str) -> Any:
    """`conf/train.yaml` with `experiment=<experiment>`, as train.py composes it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={experiment}"])


def setup_of(cfg: Any, prompt: int | None, reasoner_cfg: Any = None) -> Setup:
    """The memory-relevant settings of a composed config (GPU: bf16 base, bf16-mixed);
    `reasoner_cfg` replaces its reasoner group (GRPO runs the `init_from` SFT reasoner)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    reasoner = OmegaConf.to_container(reasoner_cfg or cfg.reasoner, resolve=True)
    stage, data = cfg.stage, cfg.data
    base = Shape.of(hf_config(model))
    body = None
    if reasoner.get("arch") == "pretrained":
        init = reasoner.get("init_from")
        raw = dict(PUBLIC_SHAPES[init]) if init in PUBLIC_SHAPES else None
        body = Shape.of(AutoConfig.for_model(raw.pop("model_type"), **raw)) if raw else base
    grpo = stage.name == "grpo"
    answer = (stage.get("max_answer_tokens") or data.max_answer_tokens) if grpo else None
    return Setup(
        stage=stage.name,
        base=base,
        body=body,
        reasoner_params=reasoner_params(reasoner, base.hidden),
        latents=int(reasoner["num_latents"]),
        prompt=data.max_prompt_tokens or prompt or PROMPT_TOKENS,
        answer=int(answer or data.max_target_tokens or data.max_answer_tokens),
        markers=MARKER_TOKENS,
        batch=int(stage.batch_size),
        micro=int(stage.micro_batch_size or stage.batch_size),
        rollout=stage.get("rollout_batch_size") if grpo else None,
        generations=int(stage.num_generations) if grpo else 1,
        beta=float(stage.get("beta", 0.0)) if grpo else 0.0,
        checkpointing=bool(model["activation_checkpointing"]),
        dtype_bytes=2 if model["dtype"] in ("bfloat16", "float16") else 4,
    )


def gpus_needed(u: Setup, strategy: str, usable: float) -> int | None:
    """The fewest GPUs of GPU_COUNTS whose predicted peak fits in `usable` bytes."""
    return next((n for n in GPU_COUNTS if predict(u, n, strategy)["total"] <= usable), None)


def suggestion(u: Setup, usable: float, n: int, strategy: str) -> str | None:
    """When the config does not fit on `n` GPUs: the largest rollout_batch_size (GRPO) or
    micro_batch_size below today's that would fit there; None when no knob is enough."""
    share = -(-u.batch // n)
    knobs = [("rollout_batch_size", "rollout", u.rollout or share)] if u.stage == "grpo" else []
    knobs.append(("micro_batch_size", "micro", u.micro))
    for key, field, now in knobs:
        for value in range(now - 1, 0, -1):
            trial = replace(u, **{field: value})
            if field == "micro" and trial.rollout is None and u.stage == "grpo":
                trial = replace(trial, rollout=share)
            if u.stage == "grpo" and (trial.rollout or share) % trial.micro:
                continue
            if predict(trial, n, strategy)["total"] <= usable:
                return f"lower stage.{key} to {value}"
    return None


def table(args: Any) -> dict[str, Any]:
    usable = args.gpu_gb * GiB * (1 - args.headroom)
    print(
        f"per-GPU peak (GiB) predicted for each paper config; fits = <= {args.gpu_gb} GiB less "
        f"{args.headroom:.0%} headroom ({usable / GiB:.0f} GiB). Assumed: prompt "
        f"{args.prompt_tokens} tokens when data.max_prompt_tokens is null, {MARKER_TOKENS} "
        "marker tokens, every answer as long as its budget, no row stopping early."
    )
    rows = []
    for stage in ("sft", "grpo"):
        for model in MODELS:
            # paper_grpo starts from the SFT run (init_from): its reasoner is paper_sft's.
            sft = compose_config(f"paper_sft_{model}").reasoner
            u = setup_of(compose_config(f"paper_{stage}_{model}"), args.prompt_tokens, sft)
            row: dict[str, Any] = {"config": f"paper_{stage}_{model}", "setup": asdict(u)}
            print(
                f"\n== paper_{stage}_{model}: {u.base.params / 1e9:.2f}B base, reasoner "
                f"{u.reasoner_params / 1e6:.0f}M, K={u.latents}, prompt {u.prompt}, answer "
                f"{u.answer}, batch {u.batch}, micro {u.micro}, rollout {u.rollout}, "
                f"G={u.generations}, beta={u.beta}, checkpointing={u.checkpointing}"
            )
            one = predict(u, 1, "ddp")
            for name, value in one["persistent"].items():
                print(f"   {value / GiB:8.2f}  {name}")
            for phase, terms in one["phases"].items():
                print(f"   -- {phase} (N=1): {sum(terms.values()) / GiB:.2f} GiB")
                for name, value in terms.items():
                    print(f"   {value / GiB:8.2f}  {name}")
            for strategy in STRATEGIES:
                totals = {n: predict(u, n, strategy) for n in GPU_COUNTS}
                need = gpus_needed(u, strategy, usable)
                line = "  ".join(
                    f"N={n}: {p['total'] / GiB:6.1f} ({p['peak_phase']})" for n, p in totals.items()
                )
                print(f"   {strategy:4}  {line}  -> GPUs needed: {need or '>8'}")
                row[strategy] = {
                    "total_gib": {n: p["total"] / GiB for n, p in totals.items()},
                    "peak_phase": {n: p["peak_phase"] for n, p in totals.items()},
                    "gpus_needed": need,
                }
            row["suggestions"] = {}
            for n, strategy in ((1, "ddp"), (8, "ddp"), (8, "fsdp")):
                if predict(u, n, strategy)["total"] > usable:
                    fix = suggestion(u, usable, n, strategy) or "no knob fits: shorten answers"
                    row["suggestions"][f"{strategy}@{n}"] = fix
                    print(f"   does not fit at N={n} ({strategy}): {fix}")
            row["terms_n1"] = one
            rows.append(row)
    return {"gpu_gb": args.gpu_gb, "headroom": args.headroom, "rows": rows}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU (GiB)")
    p.add_argument("--headroom", type=float, default=0.10, help="kept free (fragmentation)")
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    args = p.parse_args()
    write_json(args.out, "memory_model.json", table(args))


if __name__ == "__main__":
    main()
