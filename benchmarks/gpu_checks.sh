#!/usr/bin/env bash
# The one prepared command for a lent GPU machine: fail fast, fail loudly, at most 8 minutes.
# Run from the repository root with CuPy, PyTorch and pytest already on python3 (nothing is
# installed, no network):
#   OUT=/some/dir bash benchmarks/gpu_checks.sh
# Stages, each under `timeout -s INT` (so pytest still prints its summary), logs under $OUT:
#   1 preflight  imports, driver/CUDA versions, GPU name; gl.cuda_is_available() must hold   (stop on failure)
#   2 compile    every kernel file once with the loader's options; NVRTC's log on failure   (stop on failure)
#   3 gpu tests  `gpu and not slow`, -rs; a run where every GPU test skipped is a failure
#   4 benchmark  benchmarks/gpu_bench.py (step vs torch, host vs GPU time, conv, pooling, memory)
#   5 launches   benchmarks/gpu_launches.py (kernel launches and syncs per step, counted on the CPU)
#   6 distributed the --distributed command line as one GPU rank
#   7 graph step  benchmarks/graph_step.py (reference CNN and ResNet-20: eager, CUDA graph, torch)
#   8 slow tests `gpu and slow`, only with the time that is left
# The exit status is non-zero when any stage failed; $OUT/summary.json has every stage's status.
set -uo pipefail
out=${OUT:-/tmp/gpulayers-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
budget=480
status=0
declare -a stages=()

record() {  # name, exit status, seconds
  stages+=("{\"stage\": \"$1\", \"status\": $2, \"seconds\": $3}")
  echo "== $1: exit $2 (${3}s)"
  if [ "$2" -ne 0 ]; then status=1; fi
}

finish() {
  local IFS=,
  echo "{\"status\": $status, \"stages\": [${stages[*]}]}" >"$out/summary.json"
  echo "== summary: $out/summary.json (overall exit $status)"
  exit "$status"
}

run_stage() {  # name, timeout seconds, log file, command...
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  timeout -s INT -k 10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  record "$name" "$rc" $((SECONDS - start))
  return $rc
}

left() { echo $((budget - SECONDS)); }

# 1. preflight
run_stage preflight 60 "$out/preflight.log" python3 - <<'EOF'
import sys
import cupy, torch
import gpulayers as gl
rt = cupy.cuda.runtime
print("python", sys.version.split()[0], "cupy", cupy.__version__, "torch", torch.__version__)
print("driver", rt.driverGetVersion(), "runtime", rt.runtimeGetVersion())
assert gl.cuda_is_available(), f"gl.cuda_is_available() is False: {gl.backend.cuda_unavailable_reason()}"
props = rt.getDeviceProperties(0)
print("gpu", props["name"].decode(), "sm", f"{props['major']}{props['minor']}", "memory GiB", props["totalGlobalMem"] / 2**30)
print("cuda available:", gl.backend.cuda_unavailable_reason())
EOF
rc=$?
cat "$out/preflight.log"
[ $rc -eq 0 ] || finish

# 2. compile every kernel file once (the first get_function per file compiles the whole file)
run_stage compile 120 "$out/compile.log" python3 - <<'EOF'
import sys
from gpulayers import kernels
failed = 0
for path in sorted(kernels.kernel_dir().glob("*.cu")):
    names = kernels.kernel_names(kernels.kernel_source(path.name))
    try:
        for name in names:
            for dtype in ("float32", "float64"):
                kernels.get_function(path.name, name, dtype)
        print(f"compiled {path.name}: {len(names)} kernels x 2 dtypes")
    except RuntimeError as exc:  # carries NVRTC's log
        failed += 1
        print(exc)
sys.exit(1 if failed else 0)
EOF
rc=$?
cat "$out/compile.log"
[ $rc -eq 0 ] || finish

# 3. GPU tests (not the slow ones); all skipped is a failure
run_stage gpu_tests "$(( $(left) - 150 > 60 ? $(left) - 150 : 60 ))" "$out/gpu_tests.log" \
  python3 -m pytest -m "gpu and not slow" -q -rs --maxfail=30 -p no:cacheprovider --junitxml="$out/gpu_tests.xml" tests
tail -15 "$out/gpu_tests.log"
python3 - "$out/gpu_tests.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as exc:
    sys.exit(f"no test report ({exc})")
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
print(f"gpu tests: {tests} collected, {skipped} skipped, {int(suite.get('failures', 0))} failed, {int(suite.get('errors', 0))} errors")
if tests == 0 or skipped >= tests:
    sys.exit("every GPU test skipped (or none ran): the GPU path was not tested")
EOF
record gpu_tests_ran $? 0

# 4. benchmark
run_stage benchmark "$(( $(left) - 40 > 30 ? $(left) - 40 : 30 ))" "$out/gpu_bench.log" \
  python3 benchmarks/gpu_bench.py --repeat 30 --warmup 5 --json "$out/gpu_bench.json"
cat "$out/gpu_bench.log"

# 5. launches and syncs per step (CPU only)
run_stage launches 40 "$out/gpu_launches.log" python3 benchmarks/gpu_launches.py --json "$out/gpu_launches.json"
cat "$out/gpu_launches.log"

# 6. the --distributed command line as one rank on the GPU (NCCL when CuPy has it, else no transport needed)
run_stage distributed_cli 60 "$out/distributed_cli.log" \
  python3 -m gpulayers.train --distributed --device cuda --epochs 2 --no-progress
tail -4 "$out/distributed_cli.log"

# 7. the whole step as a CUDA graph against eager and PyTorch, when time is left
if [ "$(left)" -gt 60 ]; then
  run_stage graph_step "$(( $(left) - 20 < 120 ? $(left) - 20 : 120 ))" "$out/graph_step.log" \
    python3 benchmarks/graph_step.py --repeat 30 --json "$out/graph_step.json"
  cat "$out/graph_step.log"
fi

# 8. the slow GPU tests, with what is left (pytest's 5, nothing selected, is not a failure)
if [ "$(left)" -gt 30 ]; then
  start=$SECONDS
  timeout -s INT -k 10 "$(left)" python3 -m pytest -m "gpu and slow" -q -rs -p no:cacheprovider tests \
    >"$out/gpu_slow_tests.log" 2>&1
  rc=$?
  [ $rc -eq 5 ] && rc=0
  record slow_gpu_tests $rc $((SECONDS - start))
  tail -5 "$out/gpu_slow_tests.log"
fi
finish
