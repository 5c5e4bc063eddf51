#!/usr/bin/env bash
# The prepared GPU run: one command, one device call of at most 10 minutes.
#
#   bash bench/gpu_run.sh              shot 1: the rows and checks that matter most
#   bash bench/gpu_run.sh --shot 2     the compiled rows shot 1 leaves out, for a later GPU session
#   bash bench/gpu_run.sh --shot 3     the rest
#   DATA=folder-with-train.parquet TOKENIZER=t5-tokenizer-folder bash bench/gpu_run.sh
#   (defaults: .device/data/imdb and .device/data/tokenizer/imdb-unigram-32k, the folder that
#   bench/prepare_device.sh fills; `source .device/setup.sh` first installs its wheels)
#   CPU rehearsal (tiny model, generated data; the GPU checks skip):
#     BUDGET=150 bash bench/gpu_run.sh --rehearse [--shot N]
#
# Time plan. Seconds on a cold cache (nothing compiled yet), compilations counted, flan-t5-base on
# an H100/H200 with 6,000 IMDB reviews. A part runs under its guard or under what is left of BUDGET
# (470 s), whichever is less; a part with under 20 s left is skipped and says so. The expected
# times of a shot add up to at most BUDGET - 40 s (the margin); a part marked `-` is not in the
# plan: it starts only if its whole guard is left. After the ~20 s wheel install of setup.sh:
# under 520 s of a 600 s call. No compiled part comes before an eager one: a cold compile can take
# minutes, and a guard that fires in it must not cost the eager rows.
#
# plan: shot part      expect guard  what
# plan: 1    env           15    30  the card and the versions first (bench/env_check.py), then nvidia-smi
# plan: 1    eager        150   190  hf-trainer, hf-trainer-tuned, fast, baseline-loop, fast-8bit, lean, throughput, eval (score, generate): 10 s of imports, 15 of data, ~12 a row, 26 throughput, 20 eval
# plan: 1    kernels      150   180  the kernels row: one cold compile of flan-t5-base (flex forward and backward, ~90 s), ~8 CUDA graphs, 40+ warm-up and 20 timed steps; --row-limit 170
# plan: 1    checks       105   120  CUDA graphs with gradient accumulation (tiny, ~50), no host sync (eager), compiled flex (table), the bias kernel in flan-t5-base's encoder (table), fused norm
# plan: 1    profile        -    90  the step profile of kernels (inductor's cache from the kernels part: dynamo traces again, nothing is compiled again)
# plan: 2    env           15    30  as in shot 1
# plan: 2    predict       45    70  prediction: ours beside the plain transformers loop (generate), 1,000 IMDB reviews, random-init flan-t5-base (bench/scale.py versus)
# plan: 2    gathered     150   180  kernels-gathered (the other bias lookup: one cold compile), for the lookup verdict
# plan: 2    ckpt         160   190  kernels-8bit-ckpt (8-bit AdamW, activation checkpointing: one cold compile)
# plan: 2    evalkernels   60    90  eval-kernels: score at batch 256 on the kernel path (flex forward, ~3 compiles in its warm-up pass)
# plan: 3    env           15    30  as in shot 1
# plan: 3    throughput   170   200  kernels-throughput (the largest batch that fits: one cold compile per batch tried)
# plan: 3    checks       235   260  the kernel path vs eager over 50 flan-t5-base steps in bf16 (one cold compile, ~160), the other compiled flex variants, the bias kernel (gathered)
#
# $OUT receives at most eight files: run.log (every part's output, as it is printed),
# results.json and results.md (rewritten after every row; a row is there from its start, with how
# far it got), chart.png, step_profile.txt, and with shot 2 predict/results.json and predict/results.md
# (bench/scale.py, rewritten after each command). The summary comes last. Afterwards: copy them into
# bench/results/<card>-<date>/, the table into the README, and the outcomes into bench/NOTES.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flant5-gpu-out}
BUDGET=${BUDGET:-470}
GRACE=10
SHOT=1
REHEARSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) REHEARSE=1 ;;
    --shot) SHOT=${2:?--shot takes 1, 2 or 3}; shift ;;
    *) echo "gpu_run.sh: unknown argument $1 (--shot N, --rehearse)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
LOG="$OUT/run.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
# One inductor cache for every part: a graph compiled twice (the step profile's `kernels`) is read back.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/flant5-inductor} TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1

if [ "$REHEARSE" = 1 ]; then
  src=(--model-config tiny --data synthetic:400 --tokenizer word-level)
  timing=(--warmup 1 --steps "${REHEARSE_STEPS:-3}" --compiled-warmup 1 --eval-samples 32)
  profile=(--warmup 2 --steps 2)
  scale=(versus --model-config tiny --texts 64)
else
  # DATA may hold train.parquet only: evaluation timing then reads training examples.
  src=(--data "${DATA:-.device/data/imdb}" --tokenizer "${TOKENIZER:-.device/data/tokenizer/imdb-unigram-32k}" --examples 6000)
  timing=(--warmup 5 --steps 20 --compiled-warmup 40 --eval-samples 1000)
  profile=(--warmup 40 --steps 5)
  scale=(versus --model-config flan-t5-base --texts 1000)
fi
scale+=(--tokenizer "${TOKENIZER:-.device/data/tokenizer/imdb-unigram-32k}" --reviews "${DATA:-.device/data/imdb}" --out "$OUT/predict")
BENCH=(python3 -u bench/profile.py "${src[@]}" "${timing[@]}" --out "$OUT")
PYTEST=(python3 -u -m pytest -o addopts= -q -s -m gpu -p no:cacheprovider)  # one process: no workers, -s prints
KP=tests/kernels/test_kernel_path.py
NA=tests/kernels/test_norm_attention.py
FLEX=$NA::test_compiled_flex_attention_matches_reference_forward_and_backward_on_gpu

start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
say() { echo "$*" | tee -a "$LOG"; }
summary=()
part() {  # part NAME GUARD CMD...: CMD under min(GUARD, what is left) seconds, its output appended to run.log
  local name=$1 limit=$2 t0 code remaining
  shift 2
  remaining=$(left)
  if [ "$remaining" -lt 20 ]; then
    say "== $name: skipped, the budget is spent ($remaining s left)"
    summary+=("$name: skipped (budget spent)")
    return
  fi
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  say "== $name: at $(( $(date +%s) - start )) s, time guard $limit s: $*"
  t0=$(date +%s)
  timeout -k "$GRACE" "$limit" "$@" 2>&1 | tee -a "$LOG"
  code=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - t0 )) what="exit $code"
  [ "$code" -eq 124 ] || [ "$code" -eq 137 ] && what="time guard fired (exit $code)"
  say "== $name: $what after $took s"
  summary+=("$name: $what after $took s")
}
extra() {  # extra NAME GUARD CMD...: a part outside the plan, only when its whole guard is left
  if [ "$(left)" -lt "$2" ]; then
    say "== $1: skipped, under $2 s left (not in the plan)"
    summary+=("$1: skipped (under $2 s left)")
    return
  fi
  part "$@"
}

shot1() {
  part env "${LIMIT_ENV:-30}" bash -c 'python3 bench/env_check.py; timeout -k 5 15 nvidia-smi || echo "nvidia-smi: not available"'
  part eager "${LIMIT_EAGER:-190}" "${BENCH[@]}" --row-limit 60 --configs hf-trainer,hf-trainer-tuned,fast,baseline-loop,fast-8bit,lean,throughput,eval
  part kernels "${LIMIT_KERNELS:-180}" "${BENCH[@]}" --append --row-limit 170 --configs kernels
  part checks "${LIMIT_CHECKS:-120}" "${PYTEST[@]}" $KP::test_cuda_graphs_with_gradient_accumulation_on_gpu $KP::test_no_host_sync_inside_the_step_on_gpu "$FLEX[True-table]" "$NA::test_bias_kernel_in_t5_on_gpu_in_bf16[table]" $NA::test_fused_rms_norm_on_gpu
  extra profile "${LIMIT_PROFILE:-90}" python3 -u bench/step_profile.py --config kernels "${src[@]}" "${profile[@]}" --out "$OUT/step_profile.txt"
}
shot2() {
  part env "${LIMIT_ENV:-30}" bash -c 'python3 bench/env_check.py; timeout -k 5 15 nvidia-smi || echo "nvidia-smi: not available"'
  part predict "${LIMIT_PREDICT:-70}" python3 -u bench/scale.py "${scale[@]}"
  part gathered "${LIMIT_GATHERED:-180}" "${BENCH[@]}" --row-limit 170 --configs kernels-gathered
  part ckpt "${LIMIT_CKPT:-190}" "${BENCH[@]}" --append --row-limit 180 --configs kernels-8bit-ckpt
  part evalkernels "${LIMIT_EVALKERNELS:-90}" "${BENCH[@]}" --append --row-limit 80 --configs eval-kernels
}
shot3() {
  part env "${LIMIT_ENV:-30}" bash -c 'python3 bench/env_check.py; timeout -k 5 15 nvidia-smi || echo "nvidia-smi: not available"'
  part throughput "${LIMIT_THROUGHPUT:-200}" "${BENCH[@]}" --row-limit 190 --configs kernels-throughput
  part checks "${LIMIT_CHECKS:-260}" "${PYTEST[@]}" $KP::test_kernel_path_matches_eager_on_gpu_in_bf16 "$FLEX[True-gathered]" "$FLEX[False-table]" "$FLEX[False-gathered]" "$NA::test_bias_kernel_in_t5_on_gpu_in_bf16[gathered]"
}

case "$SHOT" in
  1) shot1 ;;
  2) shot2 ;;
  3) shot3 ;;
  *) echo "gpu_run.sh: --shot $SHOT: choose 1, 2 or 3" >&2; exit 2 ;;
esac
rm -f "$OUT"/*.tmp "$OUT"/*.tmp.png  # left only by a write that a guard cut short

{
  echo
  echo "== summary of shot $SHOT ($(( $(date +%s) - start )) s of a $BUDGET s budget)"
  printf '%s\n' "${summary[@]}"
  grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|skipped)|deviation|mean loss over" "$LOG" | tail -12
  head -4 "$OUT/step_profile.txt" 2>/dev/null || echo "no step profile"
  echo
  cat "$OUT/results.md" 2>/dev/null || echo "no results.md: see the bench parts above"
  cat "$OUT/predict/results.md" 2>/dev/null || true
} 2>&1 | tee -a "$LOG"
