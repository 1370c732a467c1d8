"""How much of a GRPO step's gradient is signal: the gradient noise scale of the reasoner's
GRPO loss on arith, from the SFT reasoner (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training").

Draws `--batches` disjoint batches of `--questions` training questions, rolls each out and
takes the gradient of the GRPO loss (the shipped `stage=grpo` settings plus the overrides),
as one optimiser step would. With g_i the batch gradients, the mean of g_i . g_j over pairs
i != j estimates |G|^2 (the true gradient's squared norm) and the mean |g_i|^2 minus that
estimates tr(Sigma)/b, the noise of a batch of b questions. B_noise = tr(Sigma) / |G|^2 is the
batch, in questions, at which signal and noise are of equal size; a step of B << B_noise
moves mostly along noise.

    python docs/grpo_arith/gradient_noise.py --init-from <sft reasoner> [--batches 8] \
        [--questions 8] [override ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from lrt.backbone import load_backbone
from lrt.config import validate_train
from lrt.data.loading import load_train_val
from lrt.data.prompts import format_prompt
from lrt.lm.latent_lm import LatentLM
from lrt.reasoner import load_reasoner
from lrt.training.grpo import GRPOModule

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init-from", required=True)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["stage=grpo", *args.overrides])
    config = validate_train(cfg)
    backbone = load_backbone(config.model)
    lm = LatentLM(backbone, load_reasoner(args.init_from, backbone.name, backbone.hidden_size))
    module = GRPOModule(
        lm, config.data.task, config.stage, seed=0, answer_tokens=config.data.max_answer_tokens
    )
    records = load_train_val(config.data)[0][: args.batches * args.questions]
    system = backbone.config.system_prompt
    prompts = [format_prompt(lm.tokenizer, r, config.data.prompt, system) for r in records]
    params = [p for p in module.reasoner.parameters() if p.requires_grad]
    grads, informative = [], []
    started = time.perf_counter()
    for i in range(args.batches):
        part = slice(i * args.questions, (i + 1) * args.questions)
        rollout = module.rollout(*lm.tokenize_prompts(prompts[part]), records[part], step=i)
        informative.append(float((~rollout.zero_std).float().mean()))
        module.reasoner.zero_grad()
        loss, _ = module.loss(rollout)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]).double())
    g = torch.stack(grads)
    gram = g @ g.T
    n = len(grads)

    def pairwise_mean(m: torch.Tensor) -> float:
        k = len(m)
        return float((m.sum() - m.diagonal().sum()) / (k * (k - 1)))

    true_sq = pairwise_mean(gram)
    # Jackknife over batches: the |G|^2 estimate's standard error, so a "signal" within noise
    # of zero reads as such.
    keep = [[j for j in range(n) if j != i] for i in range(n)]
    loo = torch.tensor([pairwise_mean(gram[k][:, k]) for k in keep])
    true_sq_se = float(((n - 1) / n * ((loo - loo.mean()) ** 2).sum()).sqrt())
    norms = gram.diagonal().sqrt().clamp(min=1e-30)
    noise_sq = float(gram.diagonal().mean()) - true_sq  # tr(Sigma) / b
    result = {
        "batches": n,
        "questions_per_batch": args.questions,
        "informative_share": sum(informative) / n,
        "true_gradient_sq": true_sq,
        "batch_noise_sq": noise_sq,
        "signal_to_noise": true_sq / noise_sq if noise_sq > 0 else None,
        "B_noise_questions": noise_sq * args.questions / true_sq if true_sq > 0 else None,
        "true_gradient_sq_se": true_sq_se,
        "mean_pairwise_cosine": pairwise_mean(gram / norms.outer(norms)),
        "seconds": time.perf_counter() - started,
        "overrides": args.overrides,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
