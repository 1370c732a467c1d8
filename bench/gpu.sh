#!/usr/bin/env bash
# The paper-scale paths on one GPU, random weights of Qwen3-1.7B's shape (no download), bf16,
# ending with one table of what they measured. About 6 minutes on an H100/H200, model builds
# included (each step below builds the model once: about 10 s). Needs a Python with CUDA torch
# and the package's dependencies; run from anywhere:
#
#     bash bench/gpu.sh [output folder]          # default: bench/gpu/
#
# Each step writes its JSON; a step that fails is reported in the table and the rest still
# run. Goals on an H100/H200-class GPU: our decoder >= 1.0x generate() at batch 256 with the
# same tokens; SFT MFU >= 40%; lrt latency <= 1.3x nothink and <= 0.1x cot@1024 (answers of
# random weights run to their budget, so cot@1024 decodes 1024 thinking tokens per question).
set -uo pipefail
cd "$(dirname "$0")"
out=$(realpath -m "${1:-gpu}")
mkdir -p "$out"
export PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
model=${MODEL:-qwen3_1_7b_random}  # MODEL=tiny_random DEVICE=cpu: a quick rehearsal
device=${DEVICE:-cuda}
status=()

step() {  # step <name> <command...>: run it with a time limit, note whether it passed
  local name=$1; shift
  echo "== $name"
  if timeout 150 "$@"; then status+=("$name: ok"); else status+=("$name: FAILED ($?)"); fi
}

step "decode vs generate()" python decoding.py --model $model --device $device --questions 256 \
  --max-new-tokens 64 --budget 64 --out "$out/decoding.json"
step "rollout batch all vs 1" python rollout.py --model $model --device $device --rollout-batch \
  --exploration answer --questions 8 --generations 8 --max-answer-tokens 128 \
  --out "$out/rollout.json"
step "GRPO step peak memory" python grpo_step_memory.py --model $model --device $device \
  --before "" --batch 1 --group 8 --answer-len 256 --k 64 --out "$out/grpo_step_memory.json"
step "SFT step" python train_step.py --model $model --device $device --k 256 --batch 8 \
  --prompt-len 512 --answer-len 256 --repeats 5 --out "$out/train_step.json"
step "memory paths" python memory.py --model $model --device $device --k 256 --batch 1 --group 8 \
  --prompt-len 256 --answer-len 1024 --out "$out/memory.json"
step "latency" python inference.py --model $model --device $device --task arith --questions 16 \
  --batch-sizes 16 --ks 256 --budgets 1024 --max-answer-tokens 32 --out "$out/inference.json"

printf '%s\n' "${status[@]}"
python gpu_table.py "$out" | tee "$out/table.md"
