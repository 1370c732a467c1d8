#!/usr/bin/env bash
# The paper-scale paths on one GPU, random weights of Qwen3-1.7B's shape (no download), bf16.
# Fits in 8 minutes of device time, model builds included (each step below builds it once:
# about 10 s each on an H100/H200). Needs a Python with CUDA torch and the package's
# dependencies; run from anywhere:
#
#     bash bench/gpu.sh [output folder]          # default: bench/gpu/
#
# Goals on an H100/H200-class GPU: SFT MFU >= 40%; lrt latency <= 1.3x nothink and
# <= 0.1x cot@1024 (answers of random weights run to their budget, so cot@1024 decodes 1024
# thinking tokens per question: the latency a real model pays when it thinks that long).
set -euo pipefail
cd "$(dirname "$0")"
out=$(realpath -m "${1:-gpu}")
mkdir -p "$out"
export PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
model=qwen3_1_7b_random

echo "== SFT step: K=256, batch 8, prompt 512, answer 256 (tokens/s, MFU, peak memory)"
python train_step.py --model $model --device cuda --k 256 --batch 8 --prompt-len 512 \
  --answer-len 256 --repeats 5 --out "$out/train_step.json"

echo "== answer-mode GRPO step: G=8 answers of 1024 tokens, before/after the memory paths"
python memory.py --model $model --device cuda --k 256 --batch 1 --group 8 --prompt-len 256 \
  --answer-len 1024 --out "$out/memory.json"

echo "== latency at batch 16: lrt (K=256), nothink, cot@1024"
python inference.py --model $model --device cuda --task arith --questions 16 --batch-sizes 16 \
  --ks 256 --budgets 1024 --max-answer-tokens 32 --out "$out/inference.json"
