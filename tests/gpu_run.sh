#!/usr/bin/env bash
# The CUDA path on a real GPU, as one script: each step with its own time limit, its
# whole output in $OUT/<step>.log, a one-line result per step in $OUT/summary.txt.
#
#   OUT=/path/to/results tests/gpu_run.sh              # every step, in order (the limits add up to 12.25 minutes)
#   OUT=/path/to/results tests/gpu_run.sh bench kbench # only the steps named (to rerun what failed)
# Where one command may run at most 10 minutes (the lent device machines), run it as two commands on the same warm
# machine: `tests/gpu_run.sh env install pytest` (limits 6.25 minutes), then `tests/gpu_run.sh gpu_check bench
# kbench pool` (limits 6 minutes).
#
# Steps: env (the device, driver and Python packages), install (the package, editable, with the [gpu] extra's
# numba-cuda from the image: the device machine has no package index), pytest (`pytest -m cuda -x -q`), gpu_check
# (`python -m minidistil.gpu_check`), bench (`minidistil bench --device cuda --json $OUT/bench_gpu.json`), kbench
# (`python -m minidistil.kernels.bench --device cuda`), pool (tests/gpu_pool_run.py: training steps with the device
# memory pool, its statistics and numba's cuMemAlloc / cuMemFree calls per step; then the same with
# MINIDISTIL_CUDA_POOL=0, numba's own allocator, to compare). Limits in seconds: LIMIT_<STEP> (e.g. LIMIT_PYTEST=300).
# Run from the repository root. PYTHON picks the interpreter (default python3: on the lent machines the one that
# holds PyTorch, numba-cuda and CuPy). Exit status: the number of steps that failed.
set -u
OUT=${OUT:-gpu_results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
export NUMBA_ENABLE_CUDASIM=0                         # the device itself, never the simulator
export PYTHONUNBUFFERED=1
failed=0

step() {  # step NAME DEFAULT_LIMIT COMMAND...
    local name=$1 limit_var="LIMIT_${1^^}" limit=$2
    shift 2
    limit=${!limit_var:-$limit}
    echo "== $name (limit ${limit}s)" | tee -a "$OUT/summary.txt"
    local t0=$SECONDS
    printf '$ %s\n' "$*" > "$OUT/$name.log"
    timeout --signal=INT --kill-after=15 "$limit" "$@" >> "$OUT/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    [ $rc -ne 0 ] && verdict=FAILED && failed=$((failed + 1))
    [ $rc -eq 124 ] && verdict="TIMED OUT"
    echo "   $name: $verdict (exit $rc) after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    tail -n 8 "$OUT/$name.log"
}

steps=("$@")
sel() { [ ${#steps[@]} -eq 0 ] && return 0; local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

sel env && step env 45 bash -c "
    nvidia-smi; $PY --version; $PY -m pip list 2>/dev/null | grep -i -E '^(numba|numba-cuda|cupy|numpy|torch|transformers|onnxruntime) ';
    $PY -c 'from numba import cuda; print(cuda.detect())';
    $PY -c 'from minidistil.kernels import _cuda; print(_cuda.describe())'"
# --no-index: nothing can be fetched there; --no-deps: the image already has numba-cuda (the [gpu] extra), numpy,
# numba, tokenizers; the default corpus packages (fortunes-*) are not needed by these steps
sel install && step install 90 bash -c "
    $PY -m pip install --no-index --no-deps --no-build-isolation -e '.[gpu]' && $PY -c 'import numba.cuda, minidistil'"
sel pytest && step pytest 240 "$PY" -m pytest -m cuda -x -q -p no:cacheprovider --junitxml "$OUT/pytest_cuda.xml"
sel gpu_check && step gpu_check 90 "$PY" -m minidistil.gpu_check
# `minidistil bench ...`, through the entry point's function (the same whether the package is installed or not)
sel bench && step bench 90 "$PY" -c 'import sys; from minidistil.apps.cli import main; sys.exit(main(sys.argv[1:]))' \
    bench --device cuda --json "$OUT/bench_gpu.json"
sel kbench && step kbench 60 "$PY" -m minidistil.kernels.bench --device cuda
sel pool && step pool 120 bash -c "
    $PY tests/gpu_pool_run.py --steps 4; rc=\$?; MINIDISTIL_CUDA_POOL=0 $PY tests/gpu_pool_run.py --steps 4; exit \$rc"
echo "== $failed step(s) failed; logs in $OUT" | tee -a "$OUT/summary.txt"
exit $failed
