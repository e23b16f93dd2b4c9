#!/usr/bin/env bash
# The one prepared command for a lent GPU machine (see the device tool): GPU tests, then the GPU
# benchmark, logs under $OUT. Run from the repository root, with CuPy, PyTorch and pytest already
# on python3 there (nothing is installed):
#   OUT=/some/dir bash benchmarks/gpu_checks.sh
# Budget: the GPU tests take a few minutes (the first kernel compile included), the benchmark ~1 min.
set -uo pipefail
out=${OUT:-/tmp/gpulayers-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -m gpulayers.info
} >"$out/info.log" 2>&1
# Tests first (every file's `gpu`-marked cases), stopping early on a flood of failures.
timeout 330 python3 -m pytest -m gpu -q --maxfail=20 -p no:cacheprovider tests >"$out/gpu_tests.log" 2>&1
echo "gpu tests exit: $?" >>"$out/gpu_tests.log"
timeout 150 python3 benchmarks/gpu_bench.py --json "$out/gpu_bench.json" >"$out/gpu_bench.log" 2>&1
echo "gpu bench exit: $?" >>"$out/gpu_bench.log"
# The --distributed command line as one rank on the GPU (NCCL when CuPy has it, else no transport needed).
timeout 90 python3 -m gpulayers.train --distributed --device cuda --epochs 2 --no-progress >"$out/distributed_cli.log" 2>&1
echo "distributed cli exit: $?" >>"$out/distributed_cli.log"
tail -3 "$out/gpu_tests.log"
cat "$out/gpu_bench.log"
tail -4 "$out/distributed_cli.log"
