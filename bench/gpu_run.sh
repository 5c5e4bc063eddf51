#!/usr/bin/env bash
# The prepared GPU run, in two parts that each fit one 10-minute device call.
#
#   bash ../shared/gpu/prepare.sh            # here: fills the git-ignored .device/ (wheels, IMDB train set, tokenizer)
#   device run, carry [".device"], timeout_s 600:
#     source .device/setup.sh; bash bench/gpu_run.sh           # part 1: kernel checks + the bench   (8 to 9.5 min)
#     source .device/setup.sh; bash bench/gpu_run.sh checks    # part 2: the training-loop GPU checks, step profiles (5 to 8 min)
#   extra arguments of part 1 go to bench/profile.py; a CPU rehearsal:
#     bash bench/gpu_run.sh bench --model-config tiny --steps 2 --warmup 1 --eval-samples 32
#
# Part 1: nvidia-smi and versions; each kernel against its reference, forward and backward, on the
# GPU (compiled flex attention with the relative bias, fused RMSNorm, the bias kernel inside
# flan-t5-base's encoder; at most 150 s); then bench/profile.py on the flan-t5-base architecture,
# every configuration (eager rows: 5 warm-up + 20 timed steps; compiled rows: 40 warm-up, which
# covers compilation and one CUDA graph per length bucket), then score/generate timing on 1,000
# reviews (at most 400 s). The bench writes results.json after every configuration, so a time
# guard that fires keeps what was measured.
# Part 2: the kernel path vs the eager loop over 50 flan-t5-base steps in bf16, CUDA graphs with
# gradient accumulation vs eager, and no host synchronisation inside an eager bf16 step (at most 300 s);
# then torch.profiler over 5 steady-state steps of `kernels` and of `fast` (wall vs GPU-busy time per
# step, kernel launches, top operators: what is in the way of a missed target; at most 150 s each).
# Every line reaches $OUT as it is printed. Afterwards copy $OUT/bench/results.{json,md} and
# chart.png into bench/results/<card>-<date>/ and the table into the README.
set -uo pipefail
OUT=${OUT:-/tmp/flant5-gpu-out}
mkdir -p "$OUT/bench"
export PYTHONUNBUFFERED=1
data=.device/data/imdb
tok=.device/data/tokenizer/imdb-unigram-32k
part=bench
if [ $# -gt 0 ] && { [ "$1" = bench ] || [ "$1" = checks ]; }; then part=$1; shift; fi

timeout 30 nvidia-smi 2>&1 | tee "$OUT/nvidia-smi-$part.txt"

if [ "$part" = checks ]; then
  timeout 300 python -u -m pytest -q -s -m gpu tests/kernels/test_kernel_path.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_checks.log"
  status=${PIPESTATUS[0]}
  for config in kernels fast; do
    timeout 150 python -u bench/step_profile.py --config "$config" --data "$data" --tokenizer "$tok" --out "$OUT" "$@" 2>&1 \
      | tee "$OUT/step_profile-$config.log"
  done
  echo "== summary"
  echo "gpu checks exit status: $status"
  grep -E "passed|failed|error|deviation" "$OUT/gpu_checks.log" | tail -8
  for config in kernels fast; do head -4 "$OUT/step_profile-$config.txt" 2>/dev/null || echo "$config: no profile (see step_profile-$config.log)"; done
  exit 0
fi

timeout 120 python -u -c "
import torch, transformers, accelerate, datasets, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())
print('transformers', transformers.__version__, 'accelerate', accelerate.__version__,
      'datasets', datasets.__version__, 'bitsandbytes', bitsandbytes.__version__)
" 2>&1 | tee "$OUT/versions.txt"

timeout 150 python -u -m pytest -q -s -m gpu tests/kernels/test_norm_attention.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
echo "gpu kernel tests exit status: ${PIPESTATUS[0]}"

# The .device data has no test split (carry limit), so eval timing uses train reviews.
timeout 400 python -u bench/profile.py --data "$data" --tokenizer "$tok" --warmup 5 --steps 20 --compiled-warmup 40 \
  --eval-samples 1000 --out "$OUT/bench" "$@" 2>&1 | tee "$OUT/bench.log"
echo "bench/profile.py exit status: ${PIPESTATUS[0]}"
echo "== summary"
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3
cat "$OUT/bench/results.md" 2>/dev/null || echo "no results.md (see bench.log)"
