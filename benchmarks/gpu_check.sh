#!/usr/bin/env bash
# Build, test and benchmark steerkern on a GPU machine that has torch and nvcc but no network.
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Builds the extension against this machine's torch for its GPU's arch only, runs the CUDA tests,
# times the kernels at Gemma-2-2b/9b sizes (d = 2304, 3584) and generation end to end, and writes
# every log, the build info and the JSON figures to OUTDIR (summary.txt first). Each step has a
# time limit and the whole run a deadline (GPU_CHECK_BUDGET_S, default 470 s: under 8 minutes on
# an H200); a failed step is recorded and the next one still runs, except a failed build.
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-470}))
SUMMARY="$OUT/summary.txt"
FAILED=()

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# torch's guess of CUDA_HOME from an nvcc wrapper on PATH can miss libcudart; prefer the toolkit.
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

log() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: run with its output in OUT/NAME.log, under min(LIMIT_S, time left).
step() {
  local name=$1 limit=$2 status=0 started=$SECONDS
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then
    log "== $name: skipped, the deadline is reached"
    FAILED+=("$name")
    return 0
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  log "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || status=$?
  log "   exit $status after $((SECONDS - started)) s$([ "$status" -eq 124 ] && echo ' (time limit)')"
  if [ "$status" -ne 0 ]; then
    FAILED+=("$name")
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
  fi
  return 0
}

: >"$SUMMARY"
log "steerkern gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
ARCH=$("$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST=$ARCH
log "GPU arch $ARCH, torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), nvcc: $(nvcc --version | tail -n 1)"

step build 300 "$PYTHON" -m pip install --no-build-isolation --no-deps -v -e .
step build-info 60 "$PYTHON" -c '
import json, sys, steerkern
info = steerkern.build_info()
with open(sys.argv[1], "w") as file:
    json.dump(info, file, indent=2)
print(json.dumps(info))
assert info["backend"] == "compiled" and info["compiled_with_cuda"], "the CUDA kernels were not built"' "$OUT/build_info.json"
if [[ " ${FAILED[*]} " == *" build"* ]]; then
  log "the build failed: nothing else can run"
  exit 1
fi

step cuda-tests 150 "$PYTHON" -m pytest -m cuda tests -q -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml"
# Every target shape (T = 65536 and 4096 at d = 2304/3584, the graphed decode shape, dense detect)
# against the reference, the naive formula and the roof; then torch.compile of the reference for
# each mode at T = 4096 and 65536 on its own, as compiling each shape is the slow part.
step bench 150 "$PYTHON" -m steerkern.cli bench --device cuda --budget 0.5 \
  --providers steerkern,reference,naive,roof,matmul --json "$OUT/bench.json"
step bench-compile 150 "$PYTHON" -m steerkern.cli bench --device cuda --budget 0.5 --preset sweep --ops steer \
  --tokens 4096,65536 --d 2304,3584 --k 4 --program token --providers steerkern,compile,roof --json "$OUT/bench_compile.json"
step bench-e2e 90 "$PYTHON" -m steerkern.cli bench --e2e --device cuda --json "$OUT/bench_e2e.json"

if [ ${#FAILED[@]} -ne 0 ]; then
  log "FAILED: ${FAILED[*]} (logs in $OUT)"
  exit 1
fi
log "all steps passed in $SECONDS s (logs and JSON in $OUT)"
