#!/usr/bin/env bash
# Build, check and benchmark steerkern on a GPU machine that has torch and nvcc but no network.
#
#   benchmarks/gpu_check.sh OUTDIR
#
# One run answers everything a GPU can tell, within 8 minutes on an H200:
#   build             pip install -e . for this GPU's arch only                         (limit 240 s)
#   build-info        the CUDA kernels are compiled in                                  (30 s)
#   memcheck, racecheck, initcheck
#                     every CUDA steer kernel instantiation and the serving table fill, small,
#                     under compute-sanitizer, checked against the reference
#                     (benchmarks/cuda_cases.py; racecheck and initcheck one steer case
#                     per instantiation)                                                (75, 60, 60 s)
#   cuda-tests        pytest -m cuda with CUDA_LAUNCH_BLOCKING=1, so a fault names its test (150 s)
#   bench             steerkern bench's GPU targets; fails if the fused op failed        (120 s)
#   bench-check       the fused op against the reference on slices of the bench shapes   (60 s)
#   bench-e2e         generation end to end                                             (60 s)
# Every log, the build info and the JSON figures go to OUTDIR; summary.txt (printed at the end)
# has each step's status and time, the failures' last lines, the test counts and the two GPU
# targets (bf16 fused vs the in-place pass at T >= 65536, K <= 16; µs a call at the decode shape
# under graph replay). The whole run has a deadline (GPU_CHECK_BUDGET_S, default 470 s): each step
# runs for at most the time left, a step that cannot start is recorded as skipped, and a failed
# step does not stop the next, except a failed build.
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S, COMPUTE_SANITIZER (its path).
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
    FAILED+=("$name(skipped)")
    return 0
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  log "== $name (limit ${limit} s)"
  echo "$*" >"$OUT/$name.log"
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1 || status=$?
  log "   exit $status after $((SECONDS - started)) s$([ "$status" -eq 124 ] && echo ' (time limit)')"
  if [ "$status" -ne 0 ]; then
    FAILED+=("$name")
    tail -n +2 "$OUT/$name.log" | grep -E "ERROR SUMMARY|^FAIL|FAILED|Error|error" | head -n 8 | sed 's/^/   ! /' | tee -a "$SUMMARY" || true
    tail -n 8 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
  fi
  return 0
}

: >"$SUMMARY"
log "steerkern gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
ARCH=$("$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST=$ARCH
log "GPU arch $ARCH, torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), nvcc: $(nvcc --version | tail -n 1)"

step build 240 "$PYTHON" -m pip install --no-build-isolation --no-deps -v -e .
step build-info 30 "$PYTHON" -c '
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

# compute-sanitizer: each tensor its own cudaMalloc (no caching allocator), so an access past a
# tensor's end is outside any allocation and memcheck sees it.
SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer \
  /usr/local/cuda*/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1 || true)}
if [ -n "$SANITIZER" ] && [ -x "$SANITIZER" ]; then
  log "compute-sanitizer: $SANITIZER"
  SANITIZE=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --error-exitcode 1)
  step memcheck 75 "${SANITIZE[@]}" --tool memcheck "$PYTHON" benchmarks/cuda_cases.py --detect
  step racecheck 60 "${SANITIZE[@]}" --tool racecheck "$PYTHON" benchmarks/cuda_cases.py --quick
  step initcheck 60 "${SANITIZE[@]}" --tool initcheck "$PYTHON" benchmarks/cuda_cases.py --quick
else
  log "== memcheck, racecheck, initcheck: compute-sanitizer not found (set COMPUTE_SANITIZER)"
  FAILED+=("sanitizer(missing)")
  step cuda-cases 60 "$PYTHON" benchmarks/cuda_cases.py --detect
fi

step cuda-tests 150 env CUDA_LAUNCH_BLOCKING=1 "$PYTHON" -m pytest -m cuda tests -q -rfE -p no:cacheprovider \
  -o faulthandler_timeout=60 --junitxml="$OUT/cuda-tests.xml"
# The GPU targets (T = 65536 and 4096 at d = 2304/3584, the graphed decode shape, gated steering, dense detect)
# against the reference, the naive formula and the roof; the step fails when the fused op did.
step bench 120 bash -c '"$1" -m steerkern.cli bench --device cuda --budget 0.3 \
  --providers steerkern,reference,naive,roof,matmul,same-slots,steering-slots,two-pass --json "$2" && "$1" benchmarks/cuda_cases.py --targets "$2"' \
  bench "$PYTHON" "$OUT/bench.json"
step bench-check 60 "$PYTHON" benchmarks/cuda_cases.py --bench
step bench-e2e 60 "$PYTHON" -m steerkern.cli bench --e2e --device cuda --json "$OUT/bench_e2e.json"

log ""
log "== summary after $SECONDS s"
if [ -f "$OUT/cuda-tests.xml" ]; then
  # The counts and the first failures; a run in which no CUDA test passed is a failure too.
  "$PYTHON" -c '
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
t, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"cuda tests: {t - f - e - s} passed, {f} failed, {e} errors, {s} skipped of {t}")
bad = [c for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
for case in bad[:10]:
    print("   failed: " + case.get("classname", "") + "::" + case.get("name", ""))
sys.exit(0 if t - f - e - s > 0 else 1)' "$OUT/cuda-tests.xml" 2>&1 | tee -a "$SUMMARY" || FAILED+=("cuda-tests(none passed)")
fi
if [ -f "$OUT/bench.json" ]; then
  "$PYTHON" benchmarks/cuda_cases.py --targets "$OUT/bench.json" 2>&1 | tee -a "$SUMMARY" || true
fi
if [ ${#FAILED[@]} -ne 0 ]; then
  log "FAILED: ${FAILED[*]} (logs in $OUT)"
  exit 1
fi
log "all steps passed in $SECONDS s (logs and JSON in $OUT)"
