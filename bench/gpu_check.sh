#!/usr/bin/env bash
# GPU check: build with CUDA, run the whole test suite on the GPU, run the benchmarks, and
# write OUT_DIR/<device>-<date>.{json,md}.
#
#   bash bench/gpu_check.sh [OUT_DIR] [all|tests|bench]   (default: bench/results all)
#
# all: tests then benchmarks in one time box; tests: the build and the whole test suite with the
# whole time box; bench: the build and the benchmarks only (kernels, moment matching, end-to-end
# selection on ResNet18 last-two-layer shapes, pruning on LLaMA-7B layer shapes).  With a
# 10-minute limit per call, `tests` then `bench` as two calls gives each its full time.
#
# For a GPU machine with torch, triton, pybind11, scikit-build-core, cmake and ninja already
# installed and no network: nothing is downloaded (pip runs with --no-index
# --no-build-isolation --no-deps).  The whole script is time-boxed to about 9 minutes
# (SKETCHPRUNE_GPU_CHECK_BUDGET_S, default 530 s): the tests get at most 270 s, the benchmarks
# share what is left and skip what no longer fits (they still write their JSON).
# Logs, raw JSON and a status file go to OUT_DIR/gpu_check/, packed at exit (also after a failure)
# into OUT_DIR/gpu_check.tgz, so that OUT_DIR holds at most three files: the pack and the summary
# .json / .md (SKETCHPRUNE_GPU_CHECK_PACK=0 keeps the folder instead).
# A stage past its time gets SIGINT first, so pytest still prints its summary and writes its JSON.
# SKETCHPRUNE_GPU_CHECK_DRY_RUN=1 goes on without a GPU (to check the script itself on a CPU machine).
# Exit status: non-zero when the build fails (the log tail is printed), or, after everything
# has run and the summary is written, when the tests or a benchmark run failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
OUT_DIR=${1:-bench/results}
MODE=${2:-all}
case "$MODE" in all|tests|bench) ;; *) echo "gpu_check: mode must be all, tests or bench, got '$MODE'" >&2; exit 2;; esac
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/gpu_check"
rm -rf "$LOG"
mkdir -p "$LOG/raw"
PY=${PYTHON:-python3}
BUDGET=${SKETCHPRUNE_GPU_CHECK_BUDGET_S:-530}
START=$SECONDS
STAGE_START=$SECONDS
STATUS_FILE="$LOG/status.txt"
: > "$STATUS_FILE"

pack_logs() {  # the logs as one file (a lent GPU machine returns only a few files)
    if [ "${SKETCHPRUNE_GPU_CHECK_PACK:-1}" != 0 ] && [ -d "$LOG" ]; then
        tar czf "$OUT_DIR/gpu_check.tgz" -C "$OUT_DIR" gpu_check && rm -rf "$LOG"
    fi
}
trap pack_logs EXIT
# no network on the GPU machine: fail fast where a test would try to download
export PIP_RETRIES=0 PIP_TIMEOUT=3 PYTHONUNBUFFERED=1

remaining() { echo $(( BUDGET - (SECONDS - START) )); }
stage() { STAGE_START=$SECONDS; echo; echo "==== [$(( SECONDS - START ))s] $*"; }
done_stage() {  # name status
    local took=$(( SECONDS - STAGE_START ))
    echo "==== $1: status $2, ${took}s (total $(( SECONDS - START ))s)"
    echo "$1 status=$2 seconds=${took}" >> "$STATUS_FILE"
}

# ------------------------------------------------------------------ environment
stage "environment"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L || echo "(nvidia-smi not found)"
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH" CUDACXX=/usr/local/cuda/bin/nvcc
fi
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2 || echo "(nvcc not found: the CUDA module cannot be built)"
"$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
try:
    import triton; print("triton", triton.__version__)
except Exception as exc:
    print("triton not importable:", exc)
import os
if not torch.cuda.is_available() and os.environ.get("SKETCHPRUNE_GPU_CHECK_DRY_RUN") != "1":
    sys.exit("gpu_check: torch sees no CUDA device")
EOF
done_stage environment 0

# ------------------------------------------------------------------ build
stage "build + install (SKETCHPRUNE_CUDA=ON)"
export SKETCHPRUNE_CUDA=ON
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
build_rc=0
"$PY" -m pip install --no-index --no-build-isolation --no-deps -v . > "$LOG/build.log" 2>&1 || build_rc=$?
degraded=0
if [ "$build_rc" -ne 0 ]; then
    echo "---- CUDA build failed (status $build_rc); last 80 lines of $LOG/build.log:"
    tail -n 80 "$LOG/build.log"
elif ! (cd "$LOG" && "$PY" -c "import sketchprune._C_cpu, sketchprune._C_cuda") > "$LOG/import.log" 2>&1; then
    # run from outside the source tree so the installed package is the one imported
    echo "---- the build succeeded but the compiled modules do not import:"
    cat "$LOG/import.log"
    build_rc=1
fi
if [ "$build_rc" -ne 0 ]; then
    # the Triton and torch GPU paths can still be checked in this lease: go on without the CUDA module
    done_stage build "$build_rc"
    stage "build + install without the CUDA module (SKETCHPRUNE_CUDA=OFF; results marked degraded)"
    export SKETCHPRUNE_CUDA=OFF
    "$PY" -m pip install --no-index --no-build-isolation --no-deps -v . > "$LOG/build_nocuda.log" 2>&1 || {
        tail -n 40 "$LOG/build_nocuda.log"; done_stage build_nocuda 1; exit 1; }
    degraded=1
    echo "degraded: the CUDA module did not build or import" >> "$STATUS_FILE"
fi
done_stage build "$build_rc"

# ------------------------------------------------------------------ info
stage "python -m sketchprune.info"
(cd "$LOG" && "$PY" -m sketchprune.info) 2>&1 | tee "$LOG/info.txt" || echo "---- sketchprune.info failed"
done_stage info 0

# ------------------------------------------------------------------ tests
test_rc=0
if [ "$MODE" != bench ]; then
    if [ "$MODE" = tests ]; then
        TEST_LIMIT=$(( $(remaining) - 15 ))
    else
        TEST_LIMIT=$(( $(remaining) - 150 ))
        [ "$TEST_LIMIT" -gt 270 ] && TEST_LIMIT=270
    fi
    [ "$TEST_LIMIT" -lt 30 ] && TEST_LIMIT=30
    stage "test suite on the GPU (time limit ${TEST_LIMIT}s)"
    # two runs: the tests that exercise the GPU first, then the rest (a time-out then cuts only
    # tests that CI runs anyway)
    gpu_first=(tests/ops tests/test_backends.py tests/test_budget.py tests/test_accumulator.py tests/test_compile.py
               tests/test_hash.py tests/prune/test_onload.py tests/prune/test_memory_plan.py)
    ignore=()
    for t in "${gpu_first[@]}"; do ignore+=(--ignore "$t"); done
    per_test=()
    "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(-p timeout --timeout 120)
    t_end=$(( SECONDS + TEST_LIMIT ))
    timeout -s INT -k 30 "$TEST_LIMIT" "$PY" -m pytest -q -ra --durations=15 "${per_test[@]}" "${gpu_first[@]}" \
        2>&1 | tee "$LOG/tests.log" || test_rc=$?
    rest=$(( t_end - SECONDS ))
    if [ "$rest" -ge 30 ]; then
        rc2=0
        timeout -s INT -k 30 "$rest" "$PY" -m pytest -q -ra --durations=15 "${per_test[@]}" "${ignore[@]}" tests \
            2>&1 | tee "$LOG/tests_rest.log" || rc2=$?
        [ "$test_rc" -eq 0 ] && test_rc=$rc2
    else
        echo "---- no time left for the tests that do not need a GPU (CI runs them)"
    fi
    [ "$test_rc" -eq 124 ] && echo "---- the test suite hit its ${TEST_LIMIT}s limit (status 124)"
    done_stage tests "$test_rc"
fi
if [ "$MODE" = tests ]; then
    echo
    echo "==== gpu_check (tests) finished in $(( SECONDS - START ))s: tests status $test_rc$([ "$degraded" = 1 ] && echo ', DEGRADED (no CUDA module)')"
    cat "$STATUS_FILE"
    [ "$degraded" = 1 ] && [ "$test_rc" -eq 0 ] && exit 1
    exit "$test_rc"
fi

# ------------------------------------------------------------------ benchmarks
export SKETCHPRUNE_BENCH_DEVICE=cuda
unset TRITON_INTERPRET SKETCHPRUNE_BACKEND SKETCHPRUNE_POISON || true
bench_rc=0
BENCH_TOTAL=$(( $(remaining) - 25 ))
# shares of the benchmark time (percent); the end-to-end ones run once (rounds=1)
for spec in bench_gather:12 bench_cov:22 bench_sketch:30 bench_moment_matching:8 bench_select_e2e:10 bench_prune_llama:18; do
    name=${spec%%:*}
    share=${spec##*:}
    slice=$(( BENCH_TOTAL * share / 100 ))
    left=$(( $(remaining) - 25 ))
    [ "$slice" -gt "$left" ] && slice=$left
    stage "benchmarks: $name (about ${slice}s)"
    if [ "$slice" -lt 15 ]; then
        echo "---- no time left for $name; skipped"
        done_stage "$name" skipped
        continue
    fi
    deadline=$(( $(date +%s) + slice ))
    rc=0
    timeout -s INT -k 30 $(( slice + 60 )) "$PY" -m pytest "bench/$name.py" -q -ra \
        --sp-device cuda --sp-deadline "$deadline" --sp-rounds 5 --sp-target-s 0.15 \
        --benchmark-json "$LOG/raw/$name.json" --benchmark-columns=median,min,max,rounds \
        2>&1 | tee "$LOG/$name.log" || rc=$?
    [ "$rc" -ne 0 ] && bench_rc=$rc
    done_stage "$name" "$rc"
done

# ------------------------------------------------------------------ summary
stage "summary into $OUT_DIR"
sum_rc=0
shopt -s nullglob
jsons=("$LOG"/raw/*.json)
if [ "${#jsons[@]}" -gt 0 ]; then
    "$PY" bench/summarize.py "$OUT_DIR" "${jsons[@]}" || sum_rc=$?
else
    echo "---- no benchmark JSON was written"
    sum_rc=1
fi
done_stage summary "$sum_rc"

echo
echo "==== gpu_check finished in $(( SECONDS - START ))s: tests status $test_rc, benchmarks status $bench_rc, summary status $sum_rc$([ "$degraded" = 1 ] && echo ', DEGRADED (no CUDA module)')"
cat "$STATUS_FILE"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$sum_rc" -eq 0 ] && [ "$degraded" = 0 ]
