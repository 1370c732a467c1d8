#!/usr/bin/env bash
# The command sequence behind the tables of docs/grpo_arith/README.md (issue 33). Two jobs
# run side by side, one thread each, on the 2-core CPU (the gradient-noise measurement alone,
# two threads). OUT is where the runs go.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/grpo_arith}
PY=${PY:-.venv/bin/python}
ONE="env OMP_NUM_THREADS=1"
QUIET="final_eval.enabled=false trainer.enable_progress_bar=false paths.output_root=$OUT"

# 1. The default job's SFT reasoner and its question-blind control, same recipe (290 x 6).
$ONE $PY train.py $QUIET run_name=sft_default &
$ONE $PY train.py $QUIET reasoner=prompt run_name=sft_control &
wait
SFT=$OUT/sft/arith/sft_default/reasoner/final
CONTROL=$OUT/sft/arith/sft_control/reasoner/final

# 2. How much of one GRPO step's gradient is signal (16 batches of 8 questions).
$PY docs/grpo_arith/gradient_noise.py --init-from "$SFT" --batches 16 --questions 8 \
  --out "$OUT/gradient_noise.json"

# 3. GRPO with the shipped defaults from each, 45 minutes at most.
GRPO="stage=grpo trainer.log_every_n_steps=1 +trainer.max_time=00:00:45:00"
$ONE $PY train.py $QUIET $GRPO init_from="$SFT" run_name=grpo &
$ONE $PY train.py $QUIET $GRPO init_from="$CONTROL" run_name=control_grpo &
wait

# 4. The held-out table: greedy, then the paper's sampled protocol (T=0.6, top-p 0.95, n=4).
RUNS="[$OUT/sft/arith/sft_default,$OUT/grpo/arith/grpo,$OUT/sft/arith/sft_control,$OUT/grpo/arith/control_grpo]"
PAIRS="[[grpo/final,sft_default/final],[control_grpo/final,sft_control/final],[sft_default/final,sft_control/final],[grpo/final,control_grpo/final]]"
$ONE $PY evaluate.py "checkpoints=$RUNS" "modes=[direct,lrt,cot]" "cot_budgets=[256]" limit=500 \
  batch_size=64 "paired=$PAIRS" output_dir="$OUT/table_greedy" &
$ONE $PY evaluate.py "checkpoints=[$OUT/sft/arith/sft_default,$OUT/grpo/arith/grpo]" "modes=[lrt]" limit=500 \
  batch_size=64 pass_at_k.n=4 "paired=[[grpo/final,sft_default/final]]" output_dir="$OUT/table_sampled" &
wait

# 5. Controls for GRPO itself, from the same SFT reasoner, shipped settings otherwise:
#    placebo rewards (a seeded coin, p=0.6, in place of the grader) and a constant lr 1e-4.
SFTRUN="stage=grpo init_from=$SFT trainer.log_every_n_steps=1"
$ONE $PY docs/grpo_arith/placebo.py $QUIET $SFTRUN run_name=placebo &
$ONE $PY train.py $QUIET $SFTRUN stage.optim.warmup_steps=0 stage.optim.min_lr_ratio=1.0 \
  run_name=constant &
wait
