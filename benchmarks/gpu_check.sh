#!/usr/bin/env bash
# GPU check: the `cuda` tests and the speed benchmarks on a CUDA machine, in under 10 min.
#
#   bash benchmarks/gpu_check.sh [LOG]      (default LOG: benchmarks/gpu_check.log)
#
# Runs, each under its own time limit (about 9.5 minutes in all, at most):
#   1. pytest -m cuda tests/test_cuda.py                  (placement, channels-last, AMP,
#      pinned copies; the 2-process NCCL DDP run needs two GPUs and is skipped on one)
#   2. benchmarks/bench_speed.py --device cuda            (paper widths, batch 64, 5 rounds)
#   3. benchmarks/bench_epochs.py --device cuda           (paper cb3d, 256 cubes, batch 64)
#   4. benchmarks/bench_classify_stream.py --device cuda  (extraction overlapped with inference)
# and writes everything (with nvidia-smi and the torch build) to LOG. On CUDA read the
# wall-clock ratios (the CPU time of a process waiting on the GPU means little).
# PYTHON selects the interpreter (default .venv/bin/python, else python).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3 || command -v python)"
LOG="${1:-benchmarks/gpu_check.log}"
status=0
run() {  # run LIMIT_SECONDS CMD...: one step, its exit status noted in the log
    local limit="$1"; shift
    echo "=== $(date -u +%H:%M:%S) $* (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "=== exit status $rc"
    [ "$rc" -eq 0 ] || status=1
}
{
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())"
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device: nothing to check"
        exit 2
    fi
    run 180 "$PY" -m pytest -q -m cuda -rs tests/test_cuda.py
    run 200 "$PY" benchmarks/bench_speed.py --device cuda --batch 64 --reps 5
    run 120 "$PY" benchmarks/bench_epochs.py --device cuda --size paper --samples 256 \
        --batch 64 --reps 2
    run 60 "$PY" benchmarks/bench_classify_stream.py --device cuda --batch-size 64
    echo "gpu_check done $(date -u +%H:%M:%S), status $status"
    exit "$status"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
