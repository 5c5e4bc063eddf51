#!/usr/bin/env bash
# The prepared GPU run: one command, one 10-minute device call.
#
#   bash ../shared/gpu/prepare.sh            # here: fills the git-ignored .device/ (wheels, IMDB train set, tokenizer)
#   device run, carry [".device"], timeout_s 600:
#     source .device/setup.sh; bash bench/gpu_run.sh
#   extra arguments go to bench/profile.py; a CPU rehearsal (GPU tests skip, no nvidia-smi; the
#   step profile of flan-t5-base is cut by its guard):
#     BUDGET=200 bash bench/gpu_run.sh --model-config tiny --steps 2 --warmup 1 --eval-samples 32
#
# Expected: 8 to 9.5 minutes on an H100 or H200; never more than BUDGET seconds (default 560) plus 15 s of grace for the part then running: the
# parts run in order of importance, each under a time guard of what it may take at most or what
# is left, whichever is less, so a slow part costs the ones after it, never the lease.
#   1. nvidia-smi, versions.
#   2. bench/profile.py on the flan-t5-base architecture (at most 360 s): seed-trainer, fast, the
#      three kernel-path rows (40 warm-up steps: compilation and one CUDA graph per length bucket),
#      evaluation timing, then the eager rows that matter least. results.json is rewritten after
#      every row, so a guard that fires keeps what was measured.
#   3. Each kernel against its reference on the GPU, forward and backward (at most 100 s).
#   4. The training loop on the GPU (at most 150 s): the kernel path vs the eager loop over 50 steps
#      (flan-t5-base, bf16), CUDA graphs with gradient accumulation vs eager (fp32), no host sync
#      inside an eager bf16 step.
#   5. bench/step_profile.py over 5 steady-state steps of `kernels` (at most 100 s, if 60 s are left).
# A part that outlives its guard gets SIGTERM (the loop finishes its step and stops), then SIGKILL 15 s later.
# Every line reaches $OUT as it is printed; the summary comes last. Afterwards copy
# $OUT/bench/results.{json,md}, chart.png and step_profile-kernels.txt into
# bench/results/<card>-<date>/, the table into the README, and the outcomes into bench/NOTES.md.
set -uo pipefail
OUT=${OUT:-/tmp/flant5-gpu-out}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT/bench"
export PYTHONUNBUFFERED=1
data=.device/data/imdb
tok=.device/data/tokenizer/imdb-unigram-32k
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
part() {  # part LIMIT LOG CMD...: CMD under min(LIMIT, what is left) seconds; skipped when under 20 s are left
  local limit=$1 log=$2 left
  shift 2
  left=$(left)
  if [ "$left" -lt 20 ]; then echo "skipped, budget spent: $*" | tee "$log"; return 124; fi
  [ "$left" -lt "$limit" ] && limit=$left
  timeout -k 15 "$limit" "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

timeout -k 5 30 nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
timeout -k 5 60 python -u -c "
import torch, transformers, accelerate, datasets, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')
print('transformers', transformers.__version__, 'accelerate', accelerate.__version__,
      'datasets', datasets.__version__, 'bitsandbytes', bitsandbytes.__version__)
" 2>&1 | tee "$OUT/versions.txt"

# The .device data has no test split (carry limit), so eval timing uses train reviews.
part 360 "$OUT/bench.log" python -u bench/profile.py --data "$data" --tokenizer "$tok" --warmup 5 --steps 20 \
  --compiled-warmup 40 --eval-samples 1000 --out "$OUT/bench" "$@"
bench_status=$?
part 100 "$OUT/gpu_tests.log" python -u -m pytest -q -s -m gpu tests/kernels/test_norm_attention.py -p no:cacheprovider
tests_status=$?
part 150 "$OUT/gpu_checks.log" python -u -m pytest -q -s -m gpu tests/kernels/test_kernel_path.py -p no:cacheprovider
checks_status=$?
if [ "$(left)" -ge 60 ]; then
  part 100 "$OUT/step_profile.log" python -u bench/step_profile.py --config kernels --data "$data" --tokenizer "$tok" --out "$OUT"
fi

echo "== summary ($(( $(date +%s) - start )) s)"
echo "exit status: bench $bench_status, kernel tests $tests_status, loop checks $checks_status (124: its time guard fired)"
grep -hE "passed|failed|deviation|skipped, budget" "$OUT/gpu_tests.log" "$OUT/gpu_checks.log" | tail -6
head -4 "$OUT/step_profile-kernels.txt" 2>/dev/null || echo "no step profile (see step_profile.log, if it ran)"
cat "$OUT/bench/results.md" 2>/dev/null || echo "no results.md (see bench.log)"
