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
# Logs, raw JSON and a status file go to OUT_DIR/gpu_check/.
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
"$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
try:
    import triton; print("triton", triton.__version__)
except Exception as exc:
    print("triton not importable:", exc)
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
EOF
done_stage environment 0

# ------------------------------------------------------------------ build
stage "build + install (SKETCHPRUNE_CUDA=ON)"
export SKETCHPRUNE_CUDA=ON
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
build_rc=0
"$PY" -m pip install --no-index --no-build-isolation --no-deps -v . > "$LOG/build.log" 2>&1 || build_rc=$?
if [ "$build_rc" -ne 0 ]; then
    echo "---- build failed (status $build_rc); last 80 lines of $LOG/build.log:"
    tail -n 80 "$LOG/build.log"
    done_stage build "$build_rc"
    exit 1
fi
# run from outside the source tree so the installed package is the one imported
if ! (cd "$LOG" && "$PY" -c "import sketchprune._C_cpu, sketchprune._C_cuda") > "$LOG/import.log" 2>&1; then
    echo "---- the build succeeded but the compiled modules do not import:"
    cat "$LOG/import.log"
    echo "---- last 40 lines of $LOG/build.log:"
    tail -n 40 "$LOG/build.log"
    done_stage build 1
    exit 1
fi
done_stage build 0

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
    timeout -k 10 "$TEST_LIMIT" "$PY" -m pytest -q -ra --durations=15 tests 2>&1 | tee "$LOG/tests.log" || test_rc=$?
    [ "$test_rc" -eq 124 ] && echo "---- the test suite hit its ${TEST_LIMIT}s limit (status 124)"
    done_stage tests "$test_rc"
fi
if [ "$MODE" = tests ]; then
    echo
    echo "==== gpu_check (tests) finished in $(( SECONDS - START ))s: tests status $test_rc"
    cat "$STATUS_FILE"
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
    timeout -k 10 $(( slice + 60 )) "$PY" -m pytest "bench/$name.py" -q -ra \
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
echo "==== gpu_check finished in $(( SECONDS - START ))s: tests status $test_rc, benchmarks status $bench_rc, summary status $sum_rc"
cat "$STATUS_FILE"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$sum_rc" -eq 0 ]
