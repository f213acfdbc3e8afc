#!/usr/bin/env bash
# One command for a lent GPU machine: build, verify and time nested_kernels, and write a report.
#
#   bash benchmarks/gpu_check.sh
#
# Steps, in this order (each under its own time limit; a failed step is recorded and the next runs):
#   1. build     pip install --no-build-isolation --no-deps --no-index -e .  (no downloads: the
#                machine has no internet); if pip fails, python setup.py build_ext --inplace
#   2. info      python -m nested_kernels info                  (= `nested-kernels info`)
#   3. check     python -m nested_kernels check --device cuda   (every op x tier against the reference)
#   4. bench     python benchmarks/bench_linear_memory.py --out-dir "$OUT_DIR" --budget-s ...
#      bench-16bit the first shape again with NESTED_KERNELS_TRITON_16BIT_DOTS=1 (the Hopper guard off)
#   5. bench-cms python benchmarks/bench_cms.py --shapes small --budget-s ...: cms_level, triton vs torch
#   6. bench-mlp python benchmarks/bench_mlp_memory.py: mlp_memory triton vs torch vs vmap(grad)
#   7. decode    python benchmarks/bench_decode.py: decode steps (T = 1) at batch 1…256 vs fla
#   8. hope-layer python benchmarks/bench_hope_layer.py: a HOPE layer vs a Transformer layer (SDPA), T 8192
#                (steps 5-8 write their .md/.json into the step logs, packed with them; their tables
#                go into the report)
#   9. profile   python benchmarks/profile_linear_memory.py: kernels ranked by device time per call
#      config-sweep python benchmarks/config_sweep.py: each kernel of a forward and backward timed
#                alone at its shipped launch configuration and its neighbours (what configs.py
#                should hold; informative)
#  10. isolate   python benchmarks/isolate_triton.py: each triton configuration in a process of its
#                own against the torch tier (a kernel fault stays one row; errors by tensor)
#  11. sanitizer compute-sanitizer memcheck, then racecheck, over the CUDA-kernel GPU tests (-k cuda)
#  12. compile-report python -m nested_kernels compile-report --arch 90 --out ...
#  13. pytest    python -m pytest -m "gpu and not bigmem" -q (xdist), then
#      pytest-gpu-bigmem: the bigmem tests (most of the card's memory each) alone
# The benchmark runs before pytest: `pytest -m gpu` is the long, open-ended step (a few hundred
# cases against the float64 token-loop reference), so it gets whatever time is left, while the
# benchmark (which gates itself on correctness) and the compile report always get theirs.
#
# Time: the whole script keeps within TOTAL_S seconds (default 540, under the device tool's
# 10-minute limit). Shapes: BENCH_SHAPES=auto (default) passes `--shapes all` with a time budget,
# so the benchmark does the two small shapes first and the two big ones (B2-T16384, B1-T65536)
# only while its budget lasts (rows it cannot reach read "not measured (time budget)"); set
# BENCH_SHAPES=small or all to force either.
#
# Environment:
#   OUT_DIR               where results go; default $OUT when set (the device tool copies $OUT
#                         back), else benchmarks/results
#   PYTHON                interpreter (default: python, else python3)
#   TOTAL_S               time budget of the whole script in seconds (default 540)
#   BENCH_SHAPES          auto | small | all (default auto)
#   BENCH_VARIANTS        the bench's --variants, which replace its default nodgd,dgd (both with
#                         momentum): e.g. nodgd,dgd,dgd-nomom for a row that carries no more state
#                         than fla's gated delta rule
#   STEPS                 the steps to run, by name (default: all of build info check bench bench-16bit
#                         bench-cms bench-mlp decode hope-layer profile config-sweep isolate sanitizer
#                         compile-report pytest-gpu pytest-gpu-bigmem); the device tool gives
#                         10 minutes a call, so a session can split them over calls, e.g.
#                         STEPS="build check sanitizer pytest-gpu" then STEPS="build bench decode profile";
#                         with 15 minutes of device time in all (machine start included), one call:
#                         SKIP_BUILD=1 STEPS="build bench profile isolate pytest-gpu" PROFILE_CAP=90 ISOLATE_CAP=120
#                         ISOLATE_DTYPES=fp32,bf16
#                         PYTEST_GPU_PATHS="tests/linear_memory/test_triton.py tests/common tests/test_operand_precision.py
#                         tests/test_bench_host_profile.py" TOTAL_S=560
#                         (the SPEC §8 table first, then where the time goes (kernels, and the host's
#                         syncs and Python hotspots: benchmarks/host_profile.py), the Triton tier against
#                         the torch tier per configuration, the Triton tests; building the CUDA
#                         extension took 166 s on an H100: leave SKIP_BUILD out only where the CUDA
#                         tier is what the session checks; 16-bit products, ISOLATE_DTYPES=bf16-raw,
#                         failed on the H100 of 2026-11-27). On the H200 (2026-11-26) bench took
#                         159 s for three shapes, profile 47 s (16 cases at D64; now 8, at D64 and D128), isolate 48 s for 27
#                         rows, those tests 144 s with 8 workers; a machine start about 90 s. With
#                         device time left, a second call on the warm machine times the launch
#                         configurations: STEPS="config-sweep" SWEEP_CAP=240 TOTAL_S=270
#   PYTEST_GPU_PATHS      test files or folders for `pytest -m gpu` (default: all of tests/)
#   PROFILE_CAP, SWEEP_CAP, ISOLATE_CAP  the time limits of those steps (default 120, 150, 180)
#   ISOLATE_DTYPES        the isolate step's rows (default fp32,bf16,bf16-raw); bf16-raw alone asks in
#                         its budget whether 16-bit products are safe here, at every shape
#   SKIP_BUILD=1          compile nothing: the editable install without the extension (the Triton
#                         and torch tiers; the CUDA tier then reads "not built"), or reusing the
#                         extension already built (a second run on a warm machine)
#   SKIP_COMPILE_REPORT=1 leave out the sm_90 compile report (CI runs it without a GPU)
#   PYTEST_WORKERS        pytest-xdist workers for `pytest -m gpu` when xdist is installed (default 8;
#                         0 runs in one process): Triton's compiles are CPU-bound, the cases small
#   PACK_LOGS=1           pack the step logs into one gpu-check-<stamp>-logs.tar.gz (the device tool
#                         brings back at most 8 files); default 1 when $OUT is set, else 0
#   TORCH_CUDA_ARCH_LIST  default: this card's compute capability (a single arch builds faster)
#
# Output in OUT_DIR: gpu-check-<stamp>.md (the report: card, driver, versions, pass/fail and time
# of each step, result files), gpu-check-<stamp>-logs/<step>.log, linear_memory-<tag>.md/.json,
# compile-report-sm90-<stamp>.md (8 files at most with PACK_LOGS=1: the device tool's limit; the
# cms_level benchmark's files live in the packed logs). Exit status: 0 when every step passed, else 1.
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python3)}
TOTAL_S=${TOTAL_S:-540}
BENCH_SHAPES=${BENCH_SHAPES:-auto}
RESERVE_S=15                                   # kept back for writing the report
# the time limits of the steps after the benchmark (which gets what they leave), in seconds
declare -A CAP=([bench-16bit]=90 [bench-cms]=75 [bench-mlp]=150 [decode]=90 [hope-layer]=120
                [profile]=${PROFILE_CAP:-120} [config-sweep]=${SWEEP_CAP:-150} [isolate]=${ISOLATE_CAP:-180} [sanitizer]=150 [compile-report]=150)
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
OUT_DIR=${OUT_DIR:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR" || exit 1
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG_DIR="$OUT_DIR/gpu-check-$STAMP-logs"
mkdir -p "$LOG_DIR" || exit 1
REPORT="$OUT_DIR/gpu-check-$STAMP.md"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
FAILED=0
FAILED_STEPS=()

# ---------------------------------------------------------------------------------------------

py_version() {  # py_version MODULE: its __version__, or "not installed"
    "$PYTHON" -c "import importlib, sys
try:
    print(getattr(importlib.import_module(sys.argv[1]), '__version__', 'installed'))
except Exception as e:
    print('not installed (%s)' % type(e).__name__)" "$1" 2>/dev/null || echo "unknown"
}

left_s() { echo $(( TOTAL_S - SECONDS - RESERVE_S )); }

STEPS=${STEPS:-build info check bench bench-16bit bench-cms bench-mlp decode hope-layer profile config-sweep isolate sanitizer compile-report pytest-gpu pytest-gpu-bigmem}
want() { [[ " $STEPS " == *" $1 "* ]]; }   # want STEP: whether STEPS names it
INFORMATIVE_STEPS="bench-16bit config-sweep"             # their failure is reported, not counted in the exit status

# run_step NAME CAP_S CMD...: run CMD with a time limit of min(CAP_S, time left), log it, and add
# a row to the report. Returns the command's exit status (124: timed out).
run_step() {
    local name=$1 cap=$2
    shift 2
    local log="$LOG_DIR/$name.log" left rc t0 status
    if ! want "$name"; then
        echo "| $name | not in STEPS | 0 | — |" >> "$REPORT"
        return 0
    fi
    left=$(left_s)
    if (( left < 10 )); then
        echo "| $name | SKIPPED (out of time) | 0 | — |" >> "$REPORT"
        echo "== $name: skipped, out of time" >&2
        FAILED=1
        FAILED_STEPS+=("$name")
        return 1
    fi
    (( cap > left )) && cap=$left
    echo "== $name (limit ${cap} s): $*" | tee "$log" >&2
    t0=$SECONDS
    timeout --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status="pass" ;;
        124|137) status="FAIL (timed out after ${cap} s)" ;;
        *) status="FAIL (exit $rc)" ;;
    esac
    if (( rc != 0 )) && [[ " $INFORMATIVE_STEPS " == *" $name "* ]]; then
        status="$status, informative: not counted"
    elif (( rc != 0 )); then
        FAILED=1
        FAILED_STEPS+=("$name")
    fi
    echo "| $name | $status | $(( SECONDS - t0 )) | \`${log#"$OUT_DIR"/}\` |" >> "$REPORT"
    echo "== $name: $status in $(( SECONDS - t0 )) s" >&2
    return "$rc"
}

# shellcheck disable=SC2317  # (called through `bash -c`, which shellcheck cannot see)
build_cmd() {  # the build: pip editable install without network, else an in-place build
    if "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e .; then
        echo "build: pip install -e . succeeded"
        return 0
    fi
    echo "build: pip install -e . failed; falling back to python setup.py build_ext --inplace"
    "$PYTHON" setup.py build_ext --inplace
}
export -f build_cmd
export PYTHON

# ---------------------------------------------------------------------------------------------
# Report header: the card and the versions

GPU_LINE="nvidia-smi not found"
if command -v nvidia-smi > /dev/null; then
    GPU_LINE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -n 4 | paste -sd ';' -)
fi
NVCC_LINE=$(nvcc --version 2>/dev/null | tail -n 1)
if [[ -z ${TORCH_CUDA_ARCH_LIST:-} ]]; then
    ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
    [[ -n $ARCH ]] && export TORCH_CUDA_ARCH_LIST=$ARCH
fi
{
    echo "# GPU check $STAMP"
    echo
    echo "* card (nvidia-smi name, driver): ${GPU_LINE:-not found}"
    echo "* python $("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null),"\
         "torch $(py_version torch) (CUDA $("$PYTHON" -c 'import torch; print(torch.version.cuda)' 2>/dev/null)),"\
         "triton $(py_version triton), fla $(py_version fla)"
    echo "* nvcc: ${NVCC_LINE:-not found}; ncu: $(command -v ncu || echo 'not found');"\
         "compute-sanitizer: $(command -v compute-sanitizer || echo 'not found')"
    echo "* git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown);"\
         "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-default}; time budget ${TOTAL_S} s"
    echo
    echo "| step | status | seconds | log |"
    echo "|---|---|---:|---|"
} > "$REPORT"

# ---------------------------------------------------------------------------------------------
# Steps

if [[ ${SKIP_BUILD:-0} == 1 ]]; then
    # still installed (editable, no compiler: seconds), whatever STEPS says, or
    # `nested_kernels.triton_kernels`, which setup.py maps onto triton_kernels/, does not import
    t0=$SECONDS
    if timeout 120 env NESTED_KERNELS_BUILD=none "$PYTHON" -m pip install -q --no-build-isolation --no-deps \
            --no-index -e . > "$LOG_DIR/build.log" 2>&1; then
        echo "| build | skipped (SKIP_BUILD=1; installed without the extension) | $(( SECONDS - t0 )) | — |" >> "$REPORT"
    else
        echo "| build | FAIL (SKIP_BUILD=1: the install without the extension failed) | $(( SECONDS - t0 )) |" \
             "\`${LOG_DIR#"$OUT_DIR"/}/build.log\` |" >> "$REPORT"
        FAILED=1
        FAILED_STEPS+=(build)
    fi
else
    run_step build 300 bash -c build_cmd
fi

run_step info 60 "$PYTHON" -m nested_kernels info
run_step check 120 "$PYTHON" -m nested_kernels check --device cuda --quiet

# the first shape again with 16-bit operands where the Hopper guard gives the kernels fp32 operands
# (elsewhere it would repeat the bench): what the guard costs, and whether the 16-bit kernels pass
# the benchmark's correctness gate (informative: the guard stays on)
GUARDED=$("$PYTHON" -c "import torch
from nested_kernels.triton_kernels.utils.operand_precision import fp32_operands_reason as r
print(int(torch.cuda.is_available() and r(torch.device('cuda'), torch.bfloat16) is not None))" 2>/dev/null)

# The benchmark's limit leaves the later steps that STEPS names their limits (pytest-gpu 60 s at least),
# but never less than one shape takes: 97 s for B8-T2048-H16-D64 on an H100 (2026-11-27), 30 s and 56 s
# of it fla compiling and autotuning its forward and backward; with 60 s after a 166 s build that run
# timed nothing.
BENCH_TAG="gpu-check-$STAMP"
LATER_S=0
for step in "${!CAP[@]}"; do
    [[ $step == compile-report && ${SKIP_COMPILE_REPORT:-0} == 1 ]] && continue
    [[ $step == bench-16bit && $GUARDED != 1 ]] && continue
    want "$step" && LATER_S=$(( LATER_S + CAP[$step] ))
done
want pytest-gpu && LATER_S=$(( LATER_S + 60 ))
BENCH_CAP=$(( $(left_s) - LATER_S ))
(( BENCH_CAP > 300 )) && BENCH_CAP=300
(( BENCH_CAP < 150 )) && BENCH_CAP=150
case $BENCH_SHAPES in
    small) SHAPE_ARGS=(--shapes small) ;;
    all) SHAPE_ARGS=(--shapes all) ;;
    *) SHAPE_ARGS=(--shapes all --budget-s $(( BENCH_CAP - 45 ))) ;;
esac
VARIANT_ARGS=()
[[ -n ${BENCH_VARIANTS:-} ]] && VARIANT_ARGS=(--variants "$BENCH_VARIANTS")
run_step bench "$BENCH_CAP" "$PYTHON" benchmarks/bench_linear_memory.py --out-dir "$OUT_DIR" --tag "$BENCH_TAG" \
    "${SHAPE_ARGS[@]}" "${VARIANT_ARGS[@]}"
if [[ $GUARDED != 1 ]] && want bench-16bit; then
    echo "| bench-16bit | skipped (no fp32 operands here: the bench ran the 16-bit kernels) | 0 | — |" >> "$REPORT"
else
    run_step bench-16bit "${CAP[bench-16bit]}" env NESTED_KERNELS_TRITON_16BIT_DOTS=1 "$PYTHON" benchmarks/bench_linear_memory.py \
        --out-dir "$LOG_DIR" --tag "$BENCH_TAG-16bit" --shapes B8-T2048-H16-D64 --budget-s 60
fi

run_step bench-cms "${CAP[bench-cms]}" "$PYTHON" benchmarks/bench_cms.py --out-dir "$LOG_DIR" --tag "$BENCH_TAG" \
    --shapes small --periods 16,4096 --budget-s $(( CAP[bench-cms] - 30 ))
run_step bench-mlp "${CAP[bench-mlp]}" "$PYTHON" benchmarks/bench_mlp_memory.py --out-dir "$LOG_DIR" --tag "$BENCH_TAG"
run_step decode "${CAP[decode]}" "$PYTHON" benchmarks/bench_decode.py --out-dir "$LOG_DIR" --tag "$BENCH_TAG"
run_step hope-layer "${CAP[hope-layer]}" "$PYTHON" benchmarks/bench_hope_layer.py --out-dir "$LOG_DIR" --tag "$BENCH_TAG"

run_step profile "${CAP[profile]}" "$PYTHON" benchmarks/profile_linear_memory.py --out-dir "$OUT_DIR" \
    --shapes B8-T2048-H16-D64,B4-T4096-H16-D128 --backends triton --chunks 64
SWEEP_S=$(( CAP[config-sweep] < $(left_s) ? CAP[config-sweep] : $(left_s) ))   # what run_step will allow
run_step config-sweep "$SWEEP_S" "$PYTHON" benchmarks/config_sweep.py --out-dir "$LOG_DIR" \
    --budget-s $(( SWEEP_S > 60 ? SWEEP_S - 30 : SWEEP_S / 2 ))
run_step isolate "${CAP[isolate]}" "$PYTHON" benchmarks/isolate_triton.py --out-dir "$OUT_DIR" \
    --budget-s $(( CAP[isolate] - 60 )) --dtypes "${ISOLATE_DTYPES:-fp32,bf16,bf16-raw}"

# shellcheck disable=SC2317  # (called through `bash -c`)
sanitizer_cmd() {  # memcheck then racecheck over the tests of the CUDA kernels (not Triton: too slow there)
    # on PATH, else from the pip wheel nvidia-cuda-sanitizer-api (nvidia/cu*/compute-sanitizer/)
    local bin
    bin=$(command -v compute-sanitizer || "$PYTHON" -c "import glob, importlib.util, os
spec = importlib.util.find_spec('nvidia')
dirs = list(spec.submodule_search_locations) if spec else []
print(next(iter(sorted(p for d in dirs for p in glob.glob(os.path.join(d, 'cu*', 'compute-sanitizer', 'compute-sanitizer')))), ''))")
    if [[ -z $bin ]]; then
        echo "compute-sanitizer not found (carry the wheel nvidia-cuda-sanitizer-api, see benchmarks/README.md)"
        return 1
    fi
    local tool rc=0
    for tool in memcheck racecheck; do
        echo "== $bin --tool $tool"
        "$bin" --tool "$tool" --error-exitcode 99 --target-processes all \
            "$PYTHON" -m pytest -m gpu -q -x -p no:cacheprovider -o addopts= -k cuda \
            tests/linear_memory/test_decode.py tests/mlp_memory/test_decode.py tests/linear_memory/test_cpp_recurrent.py \
            || rc=1
    done
    return "$rc"
}
export -f sanitizer_cmd
run_step sanitizer "${CAP[sanitizer]}" bash -c sanitizer_cmd

COMPILE_OUT="$OUT_DIR/compile-report-sm90-$STAMP.md"
if [[ ${SKIP_COMPILE_REPORT:-0} == 1 ]]; then
    echo "| compile-report | skipped (SKIP_COMPILE_REPORT=1) | 0 | — |" >> "$REPORT"
else
    run_step compile-report "${CAP[compile-report]}" "$PYTHON" -m nested_kernels compile-report --arch 90 --out "$COMPILE_OUT"
fi

# pyproject's addopts name --benchmark-skip, which needs pytest-benchmark; without it, override.
PYTEST_ARGS=(-q -p no:cacheprovider)
if ! "$PYTHON" -c "import pytest_benchmark" 2>/dev/null; then
    PYTEST_ARGS+=(-o "addopts=")
fi
PYTEST_WORKERS=${PYTEST_WORKERS:-8}
PARALLEL_ARGS=()
if (( PYTEST_WORKERS > 0 )) && "$PYTHON" -c "import xdist" 2>/dev/null; then
    PARALLEL_ARGS=(-n "$PYTEST_WORKERS")
fi
# The bigmem tests take most of the card's memory: alone, after the others.
read -r -a PYTEST_PATHS <<< "${PYTEST_GPU_PATHS:-}"
run_step pytest-gpu 600 "$PYTHON" -m pytest -m "gpu and not bigmem" "${PYTEST_ARGS[@]}" "${PARALLEL_ARGS[@]}" \
    "${PYTEST_PATHS[@]}"
run_step pytest-gpu-bigmem 300 "$PYTHON" -m pytest -m "gpu and bigmem" "${PYTEST_ARGS[@]}"

# ---------------------------------------------------------------------------------------------
# Result files and failing steps' tails

{
    echo
    echo "Total: $SECONDS s; overall: $([[ $FAILED == 0 ]] && echo pass || echo FAIL)"
    echo
    echo "## Result files"
    echo
    for f in "$OUT_DIR/linear_memory-$BENCH_TAG.md" "$OUT_DIR/linear_memory-$BENCH_TAG.json" \
             "$OUT_DIR/isolate-triton.md" \
             "$OUT_DIR/isolate-triton.json" "$OUT_DIR/profile-linear_memory.md" "$COMPILE_OUT"; do
        if [[ -f $f ]]; then echo "* \`$f\`"; else echo "* \`$f\` (not written)"; fi
    done
    echo "* logs: \`$LOG_DIR/\`"
    for name in "${FAILED_STEPS[@]}"; do
        log="$LOG_DIR/$name.log"
        [[ -f $log ]] || continue
        echo
        echo "## Last 40 lines of the failed step $name"
        echo
        echo '```'
        tail -n 40 "$log"
        echo '```'
    done
    if [[ -f "$OUT_DIR/linear_memory-$BENCH_TAG.md" ]]; then
        echo
        echo "## Benchmark"
        echo
        sed -e 's/^# /### /' -e 's/^## /#### /' "$OUT_DIR/linear_memory-$BENCH_TAG.md"
    fi
    for stem in "linear_memory-$BENCH_TAG-16bit" "cms-$BENCH_TAG" "mlp_memory-$BENCH_TAG" "decode-$BENCH_TAG" \
                "hope_layer-$BENCH_TAG"; do
        md="$LOG_DIR/$stem.md"
        bench=${stem%%-gpu-check-*}${stem##*"$BENCH_TAG"}
        [[ -f $md ]] || continue
        echo
        echo "## $bench benchmark"
        echo
        sed -e 's/^# /### /' -e 's/^## /#### /' "$md"
    done
    if [[ -f "$LOG_DIR/config-sweep.md" ]]; then
        echo
        sed -e 's/^# /## /' "$LOG_DIR/config-sweep.md"
    fi
} >> "$REPORT"

if [[ ${PACK_LOGS:-$([[ -n ${OUT:-} ]] && echo 1 || echo 0)} == 1 ]]; then
    tar czf "$LOG_DIR.tar.gz" -C "$OUT_DIR" "$(basename "$LOG_DIR")" && rm -rf "$LOG_DIR" \
        && sed -i "s|$(basename "$LOG_DIR")/|$(basename "$LOG_DIR").tar.gz: |" "$REPORT"
fi

echo
cat "$REPORT"
echo
echo "== steps"
grep -E '^\| (build|info|check|bench|bench-16bit|bench-cms|bench-mlp|decode|hope-layer|profile|config-sweep|isolate|sanitizer|compile-report|pytest-gpu|pytest-gpu-bigmem) \|' "$REPORT"
echo "report: $REPORT"
exit "$FAILED"
