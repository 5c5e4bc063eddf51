#!/usr/bin/env bash
# The prepared GPU run: one command, one device call of at most 10 minutes.
#
#   DATA=folder-with-train.parquet TOKENIZER=t5-tokenizer-folder bash bench/gpu_run.sh
#   (defaults: .device/data/imdb and .device/data/tokenizer/imdb-unigram-32k, the folder this
#   project's prepared GPU sessions carry; `source .device/setup.sh` first installs its wheels)
#   CPU rehearsal (tiny model, generated data; the GPU checks skip):
#     BUDGET=150 bash bench/gpu_run.sh --rehearse
#
# Wall time: at most BUDGET seconds (default 470) plus 10 s of grace for the part then running,
# after the wheel install that setup.sh does (about 20 s): under 520 s in all, on a 600 s call.
# The parts run in order of value, each under a time guard of what it may take at most or what is
# left of BUDGET, whichever is less; a part with under 20 s left is skipped and says so. A guard
# sends SIGTERM (the bench finishes its training step, records where it stopped and exits; the
# results stay), then SIGKILL 10 s later. So a slow part costs the parts after it, never the lease.
#   1. env       nvidia-smi; every module the run imports, with versions (bench/env_check.py, seconds)
#   2. bench     hf-trainer, hf-trainer-tuned (bf16, group_by_length, padding to 8, fused AdamW),
#                fast, kernels, evaluation timing (score, generate, score on the kernel
#                path), kernels-8bit-ckpt, kernels-throughput, kernels-gathered; each row under its own
#                limit; a failing kernel row is retried without CUDA graphs, then without the bias kernel
#   3. checks    on the GPU: CUDA graphs with gradient accumulation vs eager (first: a known PyTorch bug
#                lives there), the kernel path vs eager over 50 flan-t5-base steps in bf16, no host sync
#                inside a step, then each kernel against its reference
#   4. extras    the eager rows: baseline-loop, bf16, bf16-8bit, throughput (added to the same results)
#   5. profile   bench/step_profile.py on `kernels` (its compilation comes from inductor's cache)
#
# $OUT receives at most six files, flat: run.log (every part's output, as it is printed),
# results.json and results.md (rewritten after every row), chart.png, step_profile.txt.
# The summary comes last. Afterwards: copy them into bench/results/<card>-<date>/, the table
# into the README, and the outcomes into bench/NOTES.md next to the predictions there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flant5-gpu-out}
BUDGET=${BUDGET:-470}
GRACE=10
mkdir -p "$OUT"
LOG="$OUT/run.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
# One inductor cache for every part: a graph compiled twice (the step profile's `kernels`) is read back.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/flant5-inductor} TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1

if [ "${1:-}" = "--rehearse" ]; then
  src=(--model-config tiny --data synthetic:400 --tokenizer word-level)
  bench=(--warmup 1 --steps "${REHEARSE_STEPS:-3}" --compiled-warmup 1 --eval-samples 32)
  profile=(--warmup 2 --steps 2)
else
  # DATA may hold train.parquet only: evaluation timing then reads train reviews.
  src=(--data "${DATA:-.device/data/imdb}" --tokenizer "${TOKENIZER:-.device/data/tokenizer/imdb-unigram-32k}" --reviews 6000)
  bench=(--warmup 5 --steps 20 --compiled-warmup 40 --eval-samples 1000)
  profile=(--warmup 40 --steps 5)
fi

start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
say() { echo "$*" | tee -a "$LOG"; }
summary=()
part() {  # part NAME LIMIT CMD...: CMD under min(LIMIT, what is left) seconds, its output appended to run.log
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

part env "${LIMIT_ENV:-45}" bash -c 'timeout -k 5 15 nvidia-smi || echo "nvidia-smi: not available"; python3 bench/env_check.py'
part bench "${LIMIT_BENCH:-300}" python3 -u bench/profile.py "${src[@]}" "${bench[@]}" --row-limit "${ROW_LIMIT:-150}" --out "$OUT" \
  --configs hf-trainer,hf-trainer-tuned,fast,kernels,kernels-8bit-ckpt,kernels-throughput,kernels-gathered
part checks "${LIMIT_CHECKS:-150}" python3 -u -m pytest -q -s -m gpu -p no:cacheprovider \
  tests/kernels/test_kernel_path.py::test_cuda_graphs_with_gradient_accumulation_on_gpu \
  tests/kernels/test_kernel_path.py::test_kernel_path_matches_eager_on_gpu_in_bf16 \
  tests/kernels/test_kernel_path.py::test_no_host_sync_inside_the_step_on_gpu \
  tests/kernels/test_norm_attention.py
part extras "${LIMIT_EXTRAS:-90}" python3 -u bench/profile.py "${src[@]}" "${bench[@]}" --eval-samples 0 --row-limit 40 --out "$OUT" \
  --append --configs baseline-loop,bf16,bf16-8bit,throughput
if [ "$(left)" -ge 60 ]; then
  part profile "${LIMIT_PROFILE:-90}" python3 -u bench/step_profile.py --config kernels "${src[@]}" "${profile[@]}" --out "$OUT/step_profile.txt"
else
  say "== profile: skipped, under 60 s left"
  summary+=("profile: skipped (under 60 s left)")
fi
rm -f "$OUT"/*.tmp "$OUT"/*.tmp.png  # left only by a write that a guard cut short

{
  echo
  echo "== summary ($(( $(date +%s) - start )) s of a $BUDGET s budget)"
  printf '%s\n' "${summary[@]}"
  grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|skipped)|deviation|mean loss over" "$LOG" | tail -12
  head -4 "$OUT/step_profile.txt" 2>/dev/null || echo "no step profile"
  echo
  cat "$OUT/results.md" 2>/dev/null || echo "no results.md: see the bench part above"
} 2>&1 | tee -a "$LOG"
