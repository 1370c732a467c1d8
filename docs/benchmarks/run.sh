#!/usr/bin/env bash
# The real benchmarks at CPU scale (issue 41, item 2; docs/benchmarks.md): the default recipe and
# its question-blind control trained on GSM8K's train split (target: the written solution), then
#   1. GSM8K, first 500 test questions: direct, nothink, cot@256, cot@512, lrt, lrt-swap,
#      lrt-blind, and the control's lrt;
#   2. SVAMP's 1000 questions with the same reasoners, as transfer (no training on it): direct,
#      nothink, lrt, lrt-swap, the control;
#   3. where this base stands on LSAT-AR (230) and MATH-500: direct, nothink, cot@512.
# Each is one evaluate.py run whose results.md (95% intervals, paired differences) is copied
# here as gsm8k.md, svamp.md and lsat_math.md; wall times in times.tsv.
#
#   bash docs/benchmarks/run.sh                                  # the full run (est. 3-4 h, 2 cores)
#   SMOKE=1 OUT=/tmp/bench_trial bash docs/benchmarks/run.sh     # rehearsal: tiny random model
#   PHASE=train|evaluate bash docs/benchmarks/run.sh             # one half (default: all)
#
# The two trainings run side by side, one thread each; the evaluations then have both cores.
# Use a fresh OUT: a run folder that exists is resumed by train.py, so its time is not comparable.
set -euo pipefail
cd "$(dirname "$0")/../.."
SMOKE=${SMOKE:-0}
PHASE=${PHASE:-all}
PY=${PY:-.venv/bin/python}

if [[ $SMOKE == 1 ]]; then
  OUT=${OUT:-/tmp/bench_trial}
  DEST=$OUT                      # the rehearsal never writes into docs/benchmarks/
  THREADS=1
  MODEL=(model=tiny_random)
  TRAIN_CUT=(stage.max_steps=2 stage.batch_size=2 data.val.limit=2 data.max_answer_tokens=8)
  GSM8K_N=4; SVAMP_N=4; OTHER_N=2
  BUDGETS="[8,16]"; BUDGET_OTHER="[16]"; ANSWER=(max_answer_tokens=8)
else
  OUT=${OUT:-outputs/benchmarks}
  DEST=docs/benchmarks
  THREADS=2
  MODEL=()
  # The shipped default (290 steps x 6, K=8), validated once, at the end, without the blind pass:
  # validation decodes 64 questions to 256 tokens (about 5 min per pass at one thread when
  # the answers run to the budget) and changes no weight.
  TRAIN_CUT=(stage.val_every_n_steps=1000 stage.val_blind=false)
  GSM8K_N=500; SVAMP_N=null; OTHER_N=null
  BUDGETS="[256,512]"; BUDGET_OTHER="[512]"; ANSWER=()
fi
TIMES=$OUT/times.tsv
mkdir -p "$OUT/logs" "$DEST"
[[ $PHASE == evaluate ]] || : >"$TIMES"

# timed NAME COMMAND...: runs COMMAND (log in $OUT/logs/NAME.log), appends NAME <tab> seconds
# <tab> ok|failed to $TIMES, and fails the script when COMMAND fails.
timed() {
  local name=$1 status=ok start
  shift
  start=$(date +%s)
  echo "[$(date +%T)] $name: start"
  "$@" >"$OUT/logs/$name.log" 2>&1 || status=failed
  printf '%s\t%s\t%s\n' "$name" "$(($(date +%s) - start))" "$status" >>"$TIMES"
  echo "[$(date +%T)] $name: $status after $(($(date +%s) - start)) s"
  [[ $status == ok ]] || { echo "see $OUT/logs/$name.log" >&2; return 1; }
}

QUIET=(final_eval.enabled=false trainer.enable_progress_bar=false "paths.output_root=$OUT")
train() {
  env OMP_NUM_THREADS=1 "$PY" train.py data=gsm8k_local "${QUIET[@]}" "${MODEL[@]}" \
    "${TRAIN_CUT[@]}" "$@"
}
if [[ $PHASE != evaluate ]]; then
  timed lrt_gsm8k train run_name=lrt &
  A=$!
  timed control_gsm8k train reasoner=prompt run_name=control &
  B=$!
  wait $A && wait $B
fi
[[ $PHASE != train ]] || exit 0

RUNS=$OUT/sft/gsm8k
evaluate() {
  env OMP_NUM_THREADS=$THREADS "$PY" evaluate.py "${MODEL[@]}" "${ANSWER[@]}" batch_size=64 \
    "paths.output_root=$OUT" "$@"
}
timed gsm8k evaluate data=gsm8k_local "limit=$GSM8K_N" \
  "modes=[direct,nothink,cot,lrt]" "cot_budgets=$BUDGETS" \
  "checkpoints=[$RUNS/lrt,$RUNS/control]" "paired=[[lrt/final,control/final]]" \
  "output_dir=$OUT/eval_gsm8k" "hydra.run.dir=$OUT/eval_gsm8k"
timed svamp evaluate data=svamp_local "limit=$SVAMP_N" "modes=[direct,nothink,lrt]" \
  "checkpoints=[$RUNS/lrt,$RUNS/control]" "paired=[[lrt/final,control/final]]" \
  "output_dir=$OUT/eval_svamp" "hydra.run.dir=$OUT/eval_svamp"
timed lsat_math evaluate "tasks=[lsat_local,math_local]" \
  "tasks.lsat_local.test.limit=$OTHER_N" "tasks.math_local.test.limit=$OTHER_N" \
  "modes=[direct,nothink,cot]" "cot_budgets=$BUDGET_OTHER" \
  "output_dir=$OUT/eval_lsat_math" "hydra.run.dir=$OUT/eval_lsat_math"

cp "$OUT/eval_gsm8k/results.md" "$DEST/gsm8k.md"
cp "$OUT/eval_svamp/results.md" "$DEST/svamp.md"
cp "$OUT/eval_lsat_math/results.md" "$DEST/lsat_math.md"
[[ $DEST == "$OUT" ]] || cp "$TIMES" "$DEST/times.tsv"
echo "[$(date +%T)] wrote $DEST/{gsm8k,svamp,lsat_math}.md and $DEST/times.tsv"
