#!/usr/bin/env bash
# One GPU session: the accel GPU tests, then the benchmark; everything lands in $OUT (default bench/results).
# Extra benchmark flags go in BENCH_ARGS, e.g. BENCH_ARGS="--compile --only txt2img-512-b1,txt2img-768-b1".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
CKPT="${BENCH_CKPT:-/tmp/sd2-bench}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
timeout 300 python -m pytest -q -m gpu tests/test_accel.py tests/test_gpu_numerics.py tests/test_manager.py tests/test_reliability_faults.py 2>&1 | tail -20 > "$OUT/gpu_tests.txt"
# shellcheck disable=SC2086
python -m bench.run --ckpt "$CKPT" --out "$OUT" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
status=$?
cat "$OUT/gpu_tests.txt"; tail -5 "$OUT/bench.log"; cat "$OUT/results.md" 2>/dev/null
exit $status
