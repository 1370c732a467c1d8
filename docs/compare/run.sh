#!/usr/bin/env bash
# Every method of the project at its current default on the default arith task (SmolLM2-135M),
# then ONE evaluate.py run over all of them on the same first 500 held-out questions, and the
# table docs/compare/results.md + docs/compare/pareto.png (issue 41, item 1). README.md beside
# this file gives the budgets and the expected times.
#
#   bash docs/compare/run.sh                                  # the full run: 1 h 26 min on 2 cores
#   SMOKE=1 OUT=/tmp/compare_trial bash docs/compare/run.sh   # rehearsal: tiny random model,
#                                                             # a few steps each, 8 questions
#   SMOKE=1 SMOKE_MODEL=smollm2_135m OUT=... bash docs/compare/run.sh   # the same on SmolLM2
#
# Training runs in two lanes side by side, one thread each (OMP_NUM_THREADS=1); the evaluation
# then has both cores (EVAL_THREADS=2). A training that fails is logged in $OUT/train_times.tsv
# and left out of the evaluation (and the script exits 1 at the end); logs in $OUT/logs/.
# Use a fresh OUT: a run folder that exists is resumed by train.py, so its time is not comparable.
set -euo pipefail
cd "$(dirname "$0")/../.."
SMOKE=${SMOKE:-0}
PY=${PY:-.venv/bin/python}
ONE="env OMP_NUM_THREADS=1"

if [[ $SMOKE == 1 ]]; then
  OUT=${OUT:-/tmp/compare_trial}
  DEST=$OUT                      # the rehearsal never writes into docs/compare/
  EVAL_THREADS=${EVAL_THREADS:-1}
  # The tiny random Qwen3-style model (conf/model/tiny_random.yaml), or SMOKE_MODEL; short
  # answers, a few steps each.
  SMOKE_MODEL=${SMOKE_MODEL:-tiny_random}
  COMMON=("model=$SMOKE_MODEL" data.val.limit=4 data.max_answer_tokens=8)
  SFT_CUT=(stage.max_steps=3 stage.batch_size=2)
  GRPO_CUT=(stage.max_steps=2 stage.batch_size=2 stage.num_generations=2 stage.val_limit=4
    +trainer.max_time=00:00:05:00)
  RIM_CUT=(stage.max_steps=2 stage.grounding_steps=1 stage.batch_size=2 stage.lora_r=4
    stage.num_blocks=2 +trainer.max_time=00:00:05:00)
  STIR_CUT=(stage.questions=3 stage.rollouts=4 stage.batch_questions=2)
  if [[ $SMOKE_MODEL == tiny_random ]]; then
    # tests/test_stir.py's tiny settings: the random model's bytes decode to U+FFFD often.
    STIR_CUT+=(stage.max_new_tokens=12 "stage.delimiter='\\ufffd'" stage.control_points=3)
  else
    STIR_CUT+=(stage.max_new_tokens=64)
  fi
  COT_CUT=(stage.max_steps=2 stage.batch_size=2 stage.num_generations=2 stage.thinking_budget=6
    stage.max_answer_tokens=4 data.train.limit=8)
  EVAL_CUT=(limit=8 batch_size=8 "cot_budgets=[16]" max_answer_tokens=8)
  B_SFT="smoke: 3 steps x 2"; B_GRPO="smoke: 2 steps x 2 questions x 2 samples"
  B_RIM="smoke: 2 steps x 2"; B_STIR="smoke: 3 questions x 4 rollouts"
  B_COT="smoke: 2 steps x 2 questions x 2 samples"
else
  OUT=${OUT:-outputs/compare}
  DEST=docs/compare
  EVAL_THREADS=${EVAL_THREADS:-2}
  COMMON=()
  SFT_CUT=()                     # the shipped default: 290 steps x 6
  # GRPO: 20 of the shipped 48 steps (its cosine schedule then ends at step 20), 20 min at most.
  GRPO_CUT=(stage.max_steps=20 +trainer.max_time=00:00:20:00)
  # RiM: 40 of the shipped 150 steps of 16 (20 grounding + 20 refinement), 30 min at most.
  RIM_CUT=(stage.max_steps=40 stage.grounding_steps=20 +trainer.max_time=00:00:30:00)
  STIR_CUT=()                    # experiment=stir_smollm2_arith: 32 questions x 8 rollouts
  COT_CUT=(stage.max_steps=6)    # 6 of the shipped 20 steps (TRL has no time cap)
  EVAL_CUT=(limit=500 batch_size=64 "cot_budgets=[256]")
  B_SFT="shipped default: 290 steps x 6"
  B_GRPO="CUT: 20 of the shipped 48 steps (cosine over 20), cap 20 min"
  B_RIM="CUT: 40 of the shipped 150 steps x 16 (20 grounding + 20 refinement), cap 30 min"
  B_STIR="experiment=stir_smollm2_arith: 32 of the stage's 100 questions x 8 rollouts, T_max 128"
  B_COT="CUT: 6 of the shipped 20 steps x 4 questions x 4 samples"
fi
QUIET=(final_eval.enabled=false trainer.enable_progress_bar=false "paths.output_root=$OUT")
TIMES=$OUT/train_times.tsv
mkdir -p "$OUT/logs" "$DEST"
: >"$TIMES"

# timed NAME BUDGET COMMAND...: runs COMMAND (log in $OUT/logs/NAME.log) and appends
# "NAME <tab> wall seconds <tab> ok|failed <tab> BUDGET" to $TIMES.
timed() {
  local name=$1 budget=$2 status=ok start
  shift 2
  start=$(date +%s)
  echo "[$(date +%T)] $name: start"
  "$@" >"$OUT/logs/$name.log" 2>&1 || status=failed
  printf '%s\t%s\t%s\t%s\n' "$name" "$(($(date +%s) - start))" "$status" "$budget" >>"$TIMES"
  echo "[$(date +%T)] $name: $status after $(($(date +%s) - start)) s"
}
ok() { grep -q "^$1	[0-9]*	ok	" "$TIMES"; }

SFT_DIR=$OUT/sft/arith
GRPO_DIR=$OUT/grpo/arith
train() { $ONE "$PY" train.py "${QUIET[@]}" "${COMMON[@]}" "$@"; }

# Lane A (one thread): ~20 + ~15 + ~24 = ~59 min.
lane_a() {
  # LRT SFT, the default job (python train.py): ~20 min at one thread beside another job.
  timed lrt_sft "$B_SFT" train "${SFT_CUT[@]}" run_name=lrt_sft
  # LRT SFT + GRPO from it: the shipped 48 steps take 31 min here, 20 steps ~15 min.
  timed lrt_sft_grpo "$B_GRPO" train stage=grpo "${GRPO_CUT[@]}" \
    "init_from=$SFT_DIR/lrt_sft/reasoner/final" run_name=lrt_sft_grpo
  # RiM: 80 steps of 8 took 21 min (docs/rim_arith.md), 40 of 16 ~24 min.
  timed rim "$B_RIM" train stage=rim "${RIM_CUT[@]}" run_name=rim
}

# Lane B (one thread): ~20 + ~15 + ~20 + ~15 = ~70 min (worst case ~80: grpo_cot's step time
# is known only for 8 x 8 rollouts, 194 s).
lane_b() {
  # The question-blind control (reasoner=prompt), same SFT recipe: ~20 min.
  timed control_sft "$B_SFT" train reasoner=prompt "${SFT_CUT[@]}" run_name=control_sft
  # Control + GRPO, from the control's reasoner (its architecture comes with it): ~15 min.
  timed control_sft_grpo "$B_GRPO" train stage=grpo "${GRPO_CUT[@]}" \
    "init_from=$SFT_DIR/control_sft/reasoner/final" run_name=control_sft_grpo
  # STIR: mining 32 questions x 8 rollouts took 4 min 44 s in the full run (docs/compare/README.md).
  timed stir "$B_STIR" train experiment=stir_smollm2_arith "${STIR_CUT[@]}" run_name=stir
  # Token-space GRPO (TRL + LoRA on explicit CoT): 4 x 4 rollouts of <= 128 tokens a step,
  # est. 60-190 s/step: 6 steps ~6-19 min.
  timed grpo_cot "$B_COT" train stage=grpo_cot "${COT_CUT[@]}" run_name=grpo_cot
}

echo "[$(date +%T)] training in two lanes; runs under $OUT, logs in $OUT/logs"
lane_a &
A=$!
lane_b &
B=$!
wait $A
wait $B

# The one evaluation: base modes (direct, nothink, cot), lrt (+ lrt-swap) per reasoner, the
# adapter's base-only modes again, stir and rim, on the same questions. Only what trained.
CKPTS=()
for run in lrt_sft control_sft; do ok $run && CKPTS+=("$SFT_DIR/$run"); done
for run in lrt_sft_grpo control_sft_grpo; do ok $run && CKPTS+=("$GRPO_DIR/$run"); done
PAIRS=()
ok lrt_sft && ok control_sft && PAIRS+=("[lrt_sft/final,control_sft/final]")
ok lrt_sft_grpo && ok control_sft_grpo && PAIRS+=("[lrt_sft_grpo/final,control_sft_grpo/final]")
ok lrt_sft_grpo && ok lrt_sft && PAIRS+=("[lrt_sft_grpo/final,lrt_sft/final]")
ok control_sft_grpo && ok control_sft && PAIRS+=("[control_sft_grpo/final,control_sft/final]")
join() { local IFS=,; echo "$*"; }
EXTRA=()
((${#CKPTS[@]})) && EXTRA+=("checkpoints=[$(join "${CKPTS[@]}")]")
((${#PAIRS[@]})) && EXTRA+=("paired=[$(join "${PAIRS[@]}")]")
ok stir && EXTRA+=("stir_library=$OUT/stir/arith/stir")
ok rim && EXTRA+=("rim=$OUT/rim/arith/rim")
ok grpo_cot && EXTRA+=("adapter=$OUT/grpo_cot/arith/grpo_cot")

# Evaluation, both cores: est. ~55 min of one-thread decoding (table_greedy.md's s/question at
# batch 64: base and adapter ~10 min each, 4 reasoners x lrt + lrt-swap ~19, stir@256 ~10-15,
# rim ~3), ~35-40 min at two threads.
timed evaluate "${EVAL_CUT[*]} modes=[direct,nothink,cot,lrt,stir,rim] blind=false, greedy" \
  env OMP_NUM_THREADS="$EVAL_THREADS" "$PY" evaluate.py "${EVAL_CUT[@]}" \
  "modes=[direct,nothink,cot,lrt,stir,rim]" blind=false "${EXTRA[@]}" \
  "paths.output_root=$OUT" "output_dir=$OUT/eval" "hydra.run.dir=$OUT/eval"
ok evaluate || { echo "evaluate.py failed: $OUT/logs/evaluate.log" >&2; exit 1; }

$PY docs/compare/tabulate.py --eval "$OUT/eval" --times "$TIMES" --out "$DEST/results.md"
cp "$OUT/eval/pareto.png" "$DEST/pareto.png"
echo "[$(date +%T)] wrote $DEST/results.md and $DEST/pareto.png"
if grep -q "	failed	" "$TIMES"; then
  echo "some trainings failed (see $TIMES and $OUT/logs); they are missing from the table" >&2
  exit 1
fi
