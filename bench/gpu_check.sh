#!/usr/bin/env bash
# The one GPU acceptance command (issues 12, 13, 14):   bash bench/gpu_check.sh OUTDIR
#
# Parts, in order, each in its own time box (`timeout`), each writing its output as it finishes:
#   facts    device facts (nvidia-smi, torch / triton / CUDA / nvcc versions)
#   build    pip install -e . with the CUDA extension for sm_90 only on all cores (log; retried
#            without the extension if it fails, so the Triton and torch parts still run)
#   imports  every module the GPU parts use imports with `datasets` / `deepspeed` blocked; backends
#   tests    the GPU tests: tests/test_kernels.py whole, and the `gpu`-marked tests of every other
#            test file that has some (test_cuda_backend.py, test_cuda_attention.py, ...) (JUnit XML)
#   kernels  bench/bench_kernels.py: sliced linear vs cuBLAS / F.linear, attention vs SDPA
#   step     bench/bench_supernet_step.py: supernet step tokens/s, GPU-busy share and memory vs naive
#            slicing, eager backends and the graphed step (cuda_graphs) with the cuda and Triton backends
#   latency  bench/gpu_latency.py when present (latency owner's part)
# and after every part bench/gpu_summary.py (re)writes OUTDIR/summary.json and summary.md, so a run
# cut off anywhere still leaves its verdicts. OUTDIR ends with at most 7 files: gpu_check.log,
# junit.xml, kernels_gpu.csv, supernet_step_gpu.csv, latency_gpu.json, summary.json, summary.md.
#
# GPU_CHECK_PARTS="build kernels step" runs only the parts named (any of: facts build imports tests
# kernels step latency; the others are recorded as not run), e.g. to give the benchmarks the time of
# a rerun whose tests already passed; an unknown name exits 2 before anything runs.
#
# The whole run fits GPU_CHECK_TOTAL_S (default 290 s): each part gets its suggested box, or its
# proportional share of the time left when earlier parts ran long. Without a GPU it prints "no GPU"
# and exits 0. Exit status: 0 when the summary's overall verdict is "pass", 1 otherwise.
set -u
OUTDIR=${1:?usage: bash bench/gpu_check.sh OUTDIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
ALL_PARTS="facts build imports tests kernels step latency"
SELECTED=${GPU_CHECK_PARTS:-$ALL_PARTS}
for p in $SELECTED; do
    case " $ALL_PARTS " in
        *" $p "*) ;;
        *) echo "gpu_check: unknown part '$p' in GPU_CHECK_PARTS; allowed: $ALL_PARTS" >&2; exit 2 ;;
    esac
done
selected() { case " $SELECTED " in *" $1 "*) return 0 ;; esac; return 1; }

# --- no GPU: say so and stop (exit 0) ----------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "no GPU: nvidia-smi not found; GPU results stay 'not measured'"
    exit 0
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no GPU: nvidia-smi sees no device; GPU results stay 'not measured'"
    exit 0
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "no GPU: torch.cuda.is_available() is False for $PY; GPU results stay 'not measured'"
    exit 0
fi

export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
# a run replaces all seven outputs, so a subset rerun into the same folder never summarises an
# earlier run's files as its own (use a new OUTDIR to keep one)
rm -f "$OUTDIR"/{gpu_check.log,junit.xml,kernels_gpu.csv,supernet_step_gpu.csv,latency_gpu.json,summary.json,summary.md}
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
TMPD=$(mktemp -d)
trap 'rm -rf "$TMPD"' EXIT
TOTAL=${GPU_CHECK_TOTAL_S:-290}
RESERVE=6                      # the final summary
T0=$(date +%s)

# suggested boxes: the benchmarks get the most (the 2026-11-27 H200 run: the first kernel shape alone
# took 34 s of Triton compiling and tuning, the step's trainer 11 s and its Triton warm-up 21 s; the
# sm_90 build 32-60 s). The step gets the largest share: it times six modes, two of them graphed.
declare -A BOX=([facts]=15 [build]=100 [imports]=25 [tests]=60 [kernels]=100 [step]=110 [latency]=70)
declare -A MINBOX=([facts]=10 [build]=90 [imports]=20 [tests]=35 [kernels]=40 [step]=55 [latency]=35)
PARTS=(facts build imports tests kernels step latency)
[ -f bench/gpu_latency.py ] || BOX[latency]=0
for p in "${PARTS[@]}"; do selected "$p" || BOX[$p]=0; done   # time is shared among the selected parts only

elapsed() { echo $(( $(date +%s) - T0 )); }

# box_for NAME: this part's proportional share of the time left (by suggested boxes), at least
# its minimum box, at most its suggested box, and never past the total
box_for() {
    local name=$1 sum=0 seen=0 p
    for p in "${PARTS[@]}"; do
        [ "$p" = "$name" ] && seen=1
        [ $seen = 1 ] && sum=$(( sum + ${BOX[$p]} ))
    done
    local left=$(( TOTAL - RESERVE - $(elapsed) ))
    local box=$(( sum > 0 ? left * ${BOX[$name]} / sum : 0 ))
    [ "$box" -lt "${MINBOX[$name]}" ] && box=${MINBOX[$name]}
    [ "$box" -gt "${BOX[$name]}" ] && box=${BOX[$name]}
    [ "$box" -gt "$left" ] && box=$left
    echo "$box"
}

summary() { "$PY" bench/gpu_summary.py "$OUTDIR" >/dev/null 2>>"$LOG" || echo "(summary failed, see the log)"; }

skip() {
    echo "@@part {\"name\": \"$1\", \"box_s\": 0, \"seconds\": 0, \"rc\": null, \"skipped\": \"$2\"}" >> "$LOG"
    echo "[$1] not run: $2"
}

# Inside a part: `boxed S CMD...` runs CMD with SIGINT after S seconds (capped at the part's end;
# Python and pytest turn it into KeyboardInterrupt and keep what they wrote), SIGKILL 10 s later.
part_left() { echo $(( PART_END - $(date +%s) )); }
boxed() {
    local s=$1; shift
    local l; l=$(part_left)
    [ "$s" -gt "$l" ] && s=$l
    if [ "$s" -lt 1 ]; then echo "no time left in this part for: $*"; return 124; fi
    timeout -s INT -k 10 "$s" "$@"
}

# part NAME FUNCTION: box, run (output into the log), one "@@part" record, refresh the summary
part() {
    local name=$1 fn=$2 box
    if ! selected "$name"; then skip "$name" "not in GPU_CHECK_PARTS ($SELECTED)"; summary; return; fi
    box=$(box_for "$name")
    if [ "$box" -lt 5 ]; then skip "$name" "no time left in the ${TOTAL}s total"; summary; return; fi
    PART_END=$(( $(date +%s) + box ))
    NOTE=""
    printf '\n===== [%s] %s  box %ss  elapsed %ss =====\n' "$name" "$(date -u +%H:%M:%S)" "$box" "$(elapsed)" >> "$LOG"
    local t0; t0=$(date +%s%N)
    "$fn" >> "$LOG" 2>&1
    local rc=$?
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    local secs; secs=$(printf '%d.%d' $(( ms / 1000 )) $(( ms % 1000 / 100 )))
    echo "@@part {\"name\": \"$name\", \"box_s\": $box, \"seconds\": $secs, \"rc\": $rc, \"note\": \"${NOTE//\"/\'}\"}" >> "$LOG"
    echo "[$name] rc=$rc in ${secs}s (box ${box}s)${NOTE:+: $NOTE}"
    if [ $rc != 0 ]; then echo "----- last lines of [$name] -----"; tail -n 25 "$LOG" | grep -v '^@@part' ; echo "-----"; fi
    summary
}

echo "gpu_check: $REPO -> $OUTDIR (total budget ${TOTAL}s)"
# which code ran, whatever parts are selected: the commit where .git travelled, and a hash of the sources
SRC_HASH=$(find autodistil kernels csrc bench tests scripts setup.py pyproject.toml CMakeLists.txt -type f \( -name '*.py' \
    -o -name '*.cu' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.sh' -o -name '*.toml' -o -name '*.txt' \) -print0 2>/dev/null \
    | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -c1-16)
echo "@@source $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo 'no git') sha256 $SRC_HASH" | tee -a "$LOG"

# --- facts --------------------------------------------------------------------------------
facts() {
    boxed 15 nvidia-smi
    boxed 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    boxed 60 "$PY" -c 'import json, sys; sys.path.insert(0, "bench"); from common import device_facts; print("@@facts " + json.dumps(device_facts()))'
}
part facts facts

# --- build --------------------------------------------------------------------------------
build() {
    if boxed 100000 env AUTODISTIL_CUDA_ARCHS=90 MAX_JOBS=16 "$PY" -m pip install -v --no-build-isolation --no-deps -e .; then
        boxed 60 "$PY" -c "import autodistil._C as c; print('autodistil._C:', c.__file__)" && return 0
        NOTE="pip succeeded but autodistil._C does not import: cuda backend unavailable"
    else
        NOTE="CUDA extension build FAILED (log above): installed without it; torch and triton parts still run"
    fi
    echo "$NOTE"
    timeout -k 10 60 env AUTODISTIL_BUILD_CUDA=0 "$PY" -m pip install --no-build-isolation --no-deps -e . || return 2
    return 1
}
part build build

# --- imports and backends ------------------------------------------------------------------
imports() {
    boxed 100000 "$PY" bench/gpu_summary.py --import-check
    local rc=$?
    [ $rc != 0 ] && NOTE="a GPU-part module needs datasets/deepspeed at import (see @@imports)"
    boxed 100000 "$PY" -c "import json; from autodistil import ops; print('@@backends ' + json.dumps(ops.backend_status()))"
    return $rc
}
part imports imports

# --- GPU tests -----------------------------------------------------------------------------
gpu_tests() {
    local extra=() f rc1=0 rc2=0 par=()
    # the gpu-marked tests of every other test file (test_cuda_backend.py, test_cuda_attention.py, ...)
    for f in tests/test_*.py; do
        [ "$f" != tests/test_kernels.py ] && grep -q "mark.gpu" "$f" && extra+=("$f")
    done
    rm -f "$OUTDIR/junit.xml" "$TMPD/junit_extra.xml"
    # pytest-xdist when present: Triton's first compiles (CPU-bound) run on a worker per core (16 there)
    "$PY" -c "import xdist" 2>/dev/null && par=(-n auto)
    local opts=(-q -ra --tb=short --durations=10 -p no:cacheprovider)
    # first the gpu-marked tests of the other files (quick), then tests/test_kernels.py whole (on a GPU
    # every test in it runs on the GPU) in the rest of the box; at its box pytest is interrupted and
    # still writes the JUnit XML of what ran
    if [ ${#extra[@]} -gt 0 ]; then
        # serially: these ~100 tests take ~2 s (2026-11-26), less than xdist's workers take to start
        boxed $(( $(part_left) / 3 )) "$PY" -m pytest "${opts[@]}" -m gpu --junitxml "$TMPD/junit_extra.xml" "${extra[@]}"
        rc2=$?
        [ $rc2 = 5 ] && rc2=0   # pytest: no gpu-marked test collected
    fi
    boxed 100000 "$PY" -m pytest "${opts[@]}" "${par[@]}" --junitxml "$OUTDIR/junit.xml" tests/test_kernels.py
    rc1=$?
    [ -f "$TMPD/junit_extra.xml" ] && "$PY" bench/gpu_summary.py --merge-junit "$OUTDIR/junit.xml" "$TMPD/junit_extra.xml"
    [ $rc1 = 0 ] && [ $rc2 = 0 ] && return 0
    { [ $rc1 = 124 ] || [ $rc2 = 124 ]; } && return 124
    return 1
}
part tests gpu_tests

# --- benchmarks: if one implementation breaks the CUDA context (exit 3), rerun without it -----
bench_with_rerun() {  # bench_with_rerun SCRIPT OUTFILE MARGIN_S [ARGS...]
    local script=$1 out=$2 margin=$3 args=() excluded=() k rc culprit
    shift 3
    local extra=("$@")
    rm -f "$out"
    for k in 1 2 3; do
        local budget=$(( $(part_left) - margin ))
        if [ $budget -lt 5 ]; then echo "no time left for another try"; return 124; fi
        boxed 100000 "$PY" "$script" --out "$out" --budget-s "$budget" "${extra[@]}" "${args[@]}" 2>&1 \
            | tee "$TMPD/last.out"
        rc=${PIPESTATUS[0]}
        [ "$rc" != 3 ] && return "$rc"
        culprit=$(grep -o 'CONTEXT_LOST culprit=[^ ]*' "$TMPD/last.out" | tail -1 | cut -d= -f2)
        [ -z "$culprit" ] && return 3
        excluded+=("$culprit")
        NOTE="reran without ${excluded[*]} (it broke the CUDA context)"
        echo "$NOTE"
        args=(--resume --exclude "${excluded[@]}")
    done
    return 3
}
kernels() { bench_with_rerun bench/bench_kernels.py "$OUTDIR/kernels_gpu.csv" 12; }
# the step's modes in order of priority (a mode past the budget is skipped): naive and the graphed
# step first, Triton after the others (its first steps compile and tune)
STEP_MODES=(naive graphs_cuda cuda triton graphs_triton torch)
step() {
    bench_with_rerun bench/bench_supernet_step.py "$OUTDIR/supernet_step_gpu.csv" 8 --modes "${STEP_MODES[@]}"
}
part kernels kernels
part step step

# --- latency (the latency owner's script) ------------------------------------------------------
latency() {
    local budget=$(( $(part_left) - 10 ))
    [ $budget -lt 10 ] && budget=10
    boxed 100000 "$PY" bench/gpu_latency.py --out "$OUTDIR" --budget-s "$budget"
}
if [ -f bench/gpu_latency.py ] || ! selected latency; then
    part latency latency
else
    skip latency "bench/gpu_latency.py is not in this checkout"
fi

# --- summary -----------------------------------------------------------------------------------
"$PY" bench/gpu_summary.py "$OUTDIR" >> "$LOG" 2>&1
cat "$OUTDIR/summary.md" 2>/dev/null
echo "gpu_check: done in $(elapsed)s; files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
grep -q '"overall": "pass"' "$OUTDIR/summary.json" 2>/dev/null && exit 0
exit 1
