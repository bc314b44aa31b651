#!/usr/bin/env bash
# One-shot check of mmm on a CUDA machine: build, self-test, tests, compute-sanitizer, benchmarks.
#
#   usage: bench/gpu_check.sh OUTDIR
#
# Steps (each under `timeout`; a failing step does not stop the later ones):
#   build        pip install --no-build-isolation -v .  (MMM_CUDA=ON, MMM_CUDA_ARCHS = this GPU's
#                compute capability, CMAKE_BUILD_PARALLEL_LEVEL = nproc)          -> build.log
#   cpp_build    cmake configure + build of the C++ benchmarks (-DMMM_BUILD_EXTENSION=OFF
#                -DMMM_BUILD_BENCHMARKS=ON), in the background (nice'd) while the
#                checks run                                                       -> cpp-build.log
#   selftest     python -m mmm                                                    -> selftest.log
#   checks       at once, sharing the GPU (they need its answers, not its time):
#     pytest_cuda:<group>  pytest -m cuda over one group of test files (PYTEST_GROUPS), four
#                processes; a group in which no test passed fails -> pytest-cuda-<group>.log/.xml
#     pytest_rest  pytest -m "not cuda" -k "$PYTEST_REST_K" (default: the op-plumbing tests,
#                opcheck / compile / gradcheck, what this machine's torch may change)
#                                                                 -> pytest-rest.log, pytest-rest.xml
#     memcheck, racecheck  compute-sanitizer over pytest -m cuda -k sanitizer_subset
#                                                                 -> memcheck.log, racecheck.log
#     ncu_banks  ncu over bench/ncu_banks.py (each kernel path once): shared-memory instructions,
#                wavefronts and bank conflicts, global requests and sectors, per kernel, to set
#                against the emulation's counts (tests/emulate/memory_counts.h, ptx_on_cpu.h)
#                                                                     -> ncu-banks.csv, ncu-banks.log
#   cpp:<name>   every bench/cpp/bench_*.cu binary --json OUTDIR/cpp-<op>.json, one at a time,
#                the GPU otherwise idle                                           -> cpp-<op>.log
#   py:<name>    every bench/python/bench_*.py --device cuda --out OUTDIR/py-<op>.json
#                (--budget: each benchmark skips the cases it cannot start in time) -> py-<op>.log
#   summary      OUTDIR/summary.txt: GPU, nvidia-smi, commit, date, each step's status and time
#                (steps.psv: the same, one line per step)
#
# The whole script keeps within GPU_CHECK_BUDGET seconds (default 450; with the kill grace of
# `timeout -k 10` and the summary, under 8 minutes):
# each step's timeout is the smaller of its own cap and what is left after the minimum that
# every later step needs. Exit status: 0 if every step passed, 1 otherwise.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET, MMM_CUDA_ARCHS (default: queried),
# MMM_COMMIT (recorded when the tree has no .git, e.g. a copy on a device machine),
# GPU_CHECK_SKIP (space-separated step names to skip, e.g. "build pytest_rest"; pytest_cuda
# skips every group), PYTEST_REST_K.
#
# New ops plug in with no edit here: add bench/cpp/bench_<op>.cu, bench/python/bench_<op>.py
# (using bench/python/common.py's CLI) and tests whose names contain "sanitizer_subset".
set -uo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SELF")/.." && pwd)"
export PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# ---------------------------------------------------------------------------------------------
# Sub-steps run as `gpu_check.sh __step NAME` so that `timeout` can run (and kill) them.
# ---------------------------------------------------------------------------------------------
if [[ "${1:-}" == "__step" ]]; then
  cd "$REPO" || exit 1
  case "$2" in
    build)
      export CMAKE_BUILD_PARALLEL_LEVEL="$NPROC" MMM_CUDA=ON MMM_CUDA_ARCHS="$ARCH"
      echo "+ MMM_CUDA=ON MMM_CUDA_ARCHS=$ARCH CMAKE_BUILD_PARALLEL_LEVEL=$NPROC"
      echo "+ $PYTHON -m pip install --no-build-isolation --no-index --no-deps -v ."
      exec "$PYTHON" -m pip install --no-build-isolation --no-index --no-deps -v .
      ;;
    cpp_build)
      gen=()
      command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
      set -x
      cmake -S "$REPO" -B "$BENCH_BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DMMM_BUILD_EXTENSION=OFF -DMMM_BUILD_BENCHMARKS=ON -DMMM_CUDA=ON \
        -DMMM_CUDA_ARCHS="$ARCH" -DPython_EXECUTABLE="$(command -v "$PYTHON")" || exit 1
      exec cmake --build "$BENCH_BUILD" --parallel "$NPROC"
      ;;
    sanitizer)  # __step sanitizer TOOL
      tool="$3"
      # Every tensor its own cudaMalloc, so memcheck sees out-of-bounds accesses between tensors.
      export PYTORCH_NO_CUDA_MEMORY_CACHING=1
      set -x
      "$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 50 \
        "$PYTHON" -m pytest tests -m cuda -k sanitizer_subset -q -x -p no:cacheprovider
      rc=$?
      set +x
      if [[ $rc -eq 5 ]]; then
        echo "gpu_check: no tests matched -k sanitizer_subset (pytest exit 5): nothing was checked"
      fi
      exit $rc
      ;;
    ncu_banks)
      ncu="$(command -v ncu || true)"
      [[ -z "$ncu" && -x /usr/local/cuda/bin/ncu ]] && ncu=/usr/local/cuda/bin/ncu
      [[ -n "$ncu" ]] || { echo "gpu_check: ncu not found"; exit 1; }
      metrics=smsp__sass_inst_executed_op_shared_ld.sum,smsp__sass_inst_executed_op_shared_st.sum
      metrics+=,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum
      metrics+=,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum
      metrics+=,smsp__sass_inst_executed_op_ldsm.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum
      metrics+=,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum
      metrics+=,l1tex__t_requests_pipe_lsu_mem_global_op_st.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum
      set -x
      exec "$ncu" --csv --log-file "$OUTDIR/ncu-banks.csv" --kernel-name-base demangled --kernel-name regex:mmm:: \
        --launch-count 200 --metrics "$metrics" "$PYTHON" bench/ncu_banks.py
      ;;
    *) echo "unknown step $2"; exit 2 ;;
  esac
fi

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
if [[ $# -ne 1 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$SELF"
  exit 2
fi
mkdir -p "$1" || exit 2
OUTDIR="$(cd "$1" && pwd)"
export OUTDIR
T0=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-450}"
DEADLINE=$((T0 + BUDGET))
export NPROC="$(nproc)"
export BENCH_BUILD="${BENCH_BUILD:-$REPO/build/gpu-check-bench}"
SKIP=" ${GPU_CHECK_SKIP:-} "
cd "$REPO" || exit 2

# Plan. The correctness checks share the GPU and run at once (phase "checks"); the benchmarks
# then run one at a time with the GPU to themselves. Cap: most seconds; min: least seconds worth
# starting with. Caps only stop a hung step from eating the budget; time_for() keeps every later
# step's minimum free, and time a fast step leaves goes to the later ones.
ORDER=(build selftest checks cpp_bench py_bench)
declare -A CAP=([build]=240 [selftest]=45 [checks]=210 [cpp_bench]=100 [py_bench]=240)
declare -A MIN=([build]=60 [selftest]=10 [checks]=45 [cpp_bench]=15 [py_bench]=45)
# The checks phase: pytest -m cuda split over these processes (by test file, roughly equal GPU
# time; files not named here go to the last group), pytest_rest, memcheck, racecheck, ncu_banks.
PYTEST_GROUPS=("norm:tests/test_fused_add_norm.py" "attention:tests/test_attention.py"
               "gemm:tests/test_block_diag_matmul.py tests/test_monarch_layers.py" "rest:")
# pytest_rest on the device machine: the CPU tests that exercise torch's op plumbing (opcheck,
# torch.compile, gradcheck), which is what differs there (torch 2.11, Python 3.12); CI runs every
# CPU test. PYTEST_REST_K="" runs them all.
PYTEST_REST_K="${PYTEST_REST_K-opcheck or compile or gradcheck}"
skipped() { [[ "$SKIP" == *" $1 "* ]]; }

# Seconds step $1 may use now: min(cap, time left - the minimum every later step needs).
time_for() {
  local name="$1" later=0 seen=0 s
  for s in "${ORDER[@]}"; do
    [[ $seen -eq 1 ]] && ! skipped "$s" && later=$((later + MIN[$s]))
    [[ "$s" == "$name" ]] && seen=1
  done
  local left=$((DEADLINE - $(date +%s) - later))
  local cap="${CAP[$name]}"
  echo $(( left < cap ? left : cap ))
}

# Step results, one line each (name|status|seconds|log), appended by steps running in the
# background too.
STEPS="$OUTDIR/steps.psv"
: >"$STEPS"
record() {   # name status seconds log
  printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"
  printf '[gpu_check %4ds] %-28s %-22s %6ss  %s\n' "$(( $(date +%s) - T0 ))" "$1" "$2" "$3" "$4"
}
status_of() {  # rc [log] -> OK | TIMEOUT | FAIL(rc) | NOTESTS
  local rc="$1" log="${2:-}"
  if [[ $rc -eq 0 ]]; then echo OK
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then echo TIMEOUT
  elif [[ $rc -eq 5 && -n "$log" ]] && grep -q -e "no tests ran" -e "deselected" -e "collected 0 items" "$log" 2>/dev/null; then echo "NOTESTS(5)"
  else echo "FAIL($rc)"
  fi
}
now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# run NAME TIMEOUT LOG cmd...   (records status; OK_RC5=1 makes pytest's "no tests" an OK;
# NEED_PASS=1 makes a pytest run in which no test passed a failure)
run() {
  local name="$1" t="$2" log="$3"; shift 3
  if (( t < 1 )); then record "$name" "SKIPPED(no time)" 0 "$(basename "$log")"; return 1; fi
  echo "[gpu_check] $name (timeout ${t}s): $*" >"$log"
  local start; start=$(now_s)
  timeout -k 10 "$t" "$@" >>"$log" 2>&1
  local rc=$?
  local st; st=$(status_of "$rc" "$log")
  [[ "${OK_RC5:-0}" == 1 && "$st" == NOTESTS* ]] && st="OK(no tests)"
  # CUDA test steps: exit 0 with every test skipped (no usable GPU) checked nothing.
  if [[ "${NEED_PASS:-0}" == 1 && "$st" == OK ]] && ! grep -qE '[0-9]+ passed' "$log"; then
    st="FAIL(none passed)"
  fi
  record "$name" "$st" "$(elapsed "$start")" "$(basename "$log")"
  return $rc
}
# step NAME LOG cmd...: a planned step, with its timeout from time_for, or skipped.
step() {
  local name="$1" log="$2"; shift 2
  if skipped "$name"; then record "$name" "OK(skipped by request)" 0 "-"; return 0; fi
  local t; t=$(time_for "$name")
  if (( t < MIN[$name] )); then record "$name" "SKIPPED(no time)" 0 "$(basename "$log")"; return 1; fi
  run "$name" "$t" "$log" "$@"
}

# --- facts ------------------------------------------------------------------------------------
aux() { timeout -k 5 20 "$@"; }   # every helper command outside the steps is bounded too
COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)"
COMMIT="${COMMIT:-${MMM_COMMIT:-unknown}}"
export MMM_COMMIT="$COMMIT"
GPU_NAME="$(aux nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
ARCH="${MMM_CUDA_ARCHS:-$(aux nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')}"
if [[ -z "$ARCH" ]]; then
  ARCH="$(aux "$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)"
fi
export ARCH
SANITIZER="$(command -v compute-sanitizer || true)"
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [[ -z "$SANITIZER" && -x "$c" ]] && SANITIZER="$c"
done
export SANITIZER
PYINFO="$(aux "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -n1)"
echo "[gpu_check] repo $REPO, out $OUTDIR, GPU '${GPU_NAME:-none}', arch '${ARCH:-?}', commit $COMMIT, budget ${BUDGET}s, $NPROC cores"
{
  echo "== nvidia-smi"; aux nvidia-smi 2>&1
  echo "== nvcc"; (command -v nvcc && nvcc --version) 2>&1 || /usr/local/cuda/bin/nvcc --version 2>&1
  echo "== python / torch"; echo "$PYINFO"
  echo "== cmake"; cmake --version 2>&1 | head -n1
  echo "== compute-sanitizer"; echo "${SANITIZER:-not found}"
} >"$OUTDIR/environment.txt" 2>&1

if [[ -z "$ARCH" ]]; then
  record "detect_arch" "FAIL(no GPU found)" 0 environment.txt
  ARCH="9.0"
fi

# --- 1. build ----------------------------------------------------------------------------------
BUILD_START=$(now_s)
step build "$OUTDIR/build.log" "$SELF" __step build
BUILD_S="$(elapsed "$BUILD_START")"

# --- 5a. C++ benchmark build, in the background while the tests run ---------------------------
CPP_PID=""
if ! skipped cpp_bench; then
  # It must end before cpp_bench starts at the latest: leave cpp_bench + py_bench their minimum.
  CPP_T=$(( DEADLINE - $(date +%s) - MIN[cpp_bench] - MIN[py_bench] ))
  (( CPP_T > 300 )) && CPP_T=300
  CPP_START=$(now_s)
  if (( CPP_T >= 20 )); then
    echo "[gpu_check] cpp_build (background, timeout ${CPP_T}s)" >"$OUTDIR/cpp-build.log"
    nice -n 10 timeout -k 10 "$CPP_T" "$SELF" __step cpp_build >>"$OUTDIR/cpp-build.log" 2>&1 &
    CPP_PID=$!
  fi
fi

# --- 2. self-test ------------------------------------------------------------------------------
step selftest "$OUTDIR/selftest.log" "$PYTHON" -m mmm

# --- 3. checks: tests, compute-sanitizer and Nsight Compute at once ------------------------------
# They only need the GPU's answers, not its time, so they share it; every job gets the phase's
# whole timeout.
CHECK_JOBS=()
check() {  # name log cmd...: one job of the phase, in the background
  local name="$1" base="${1%%:*}"
  if skipped "$base"; then record "$name" "OK(skipped by request)" 0 "-"; return; fi
  if (( T_CHECKS < MIN[checks] )); then record "$name" "SKIPPED(no time)" 0 "$(basename "$2")"; return; fi
  local log="$2"; shift 2
  run "$name" "$T_CHECKS" "$log" "$@" &
  CHECK_JOBS+=($!)
}
T_CHECKS=$(time_for checks)
named_files=" "
for g in "${PYTEST_GROUPS[@]}"; do named_files+="${g#*:} "; done
for g in "${PYTEST_GROUPS[@]}"; do
  gname="${g%%:*}" files="${g#*:}"
  if [[ -z "$files" ]]; then  # the rest: every test file no other group names
    for f in tests/test_*.py; do [[ "$named_files" == *" $f "* ]] || files+="$f "; done
  fi
  # shellcheck disable=SC2086  # files: a list of paths without spaces
  NEED_PASS=1 check "pytest_cuda:$gname" "$OUTDIR/pytest-cuda-$gname.log" "$PYTHON" -m pytest $files -m cuda -q \
    --maxfail=30 -p no:cacheprovider --junitxml="$OUTDIR/pytest-cuda-$gname.xml"
done
rest_sel=(-m "not cuda")
[[ -n "$PYTEST_REST_K" ]] && rest_sel+=(-k "$PYTEST_REST_K")
OK_RC5=1 check pytest_rest "$OUTDIR/pytest-rest.log" "$PYTHON" -m pytest tests "${rest_sel[@]}" -q \
  --maxfail=20 -p no:cacheprovider --junitxml="$OUTDIR/pytest-rest.xml"
for tool in memcheck racecheck; do
  if ! skipped "$tool" && [[ -z "$SANITIZER" ]]; then record "$tool" "FAIL(no compute-sanitizer)" 0 "-"; continue; fi
  NEED_PASS=1 check "$tool" "$OUTDIR/$tool.log" "$SELF" __step sanitizer "$tool"
done
check ncu_banks "$OUTDIR/ncu-banks.log" "$SELF" __step ncu_banks
(( ${#CHECK_JOBS[@]} > 0 )) && wait "${CHECK_JOBS[@]}"

# --- 5b. C++ benchmarks ------------------------------------------------------------------------
if skipped cpp_bench; then
  record cpp_bench "OK(skipped by request)" 0 "-"
else
  if [[ -n "$CPP_PID" ]]; then
    wait "$CPP_PID"; rc=$?
    record cpp_build "$(status_of $rc)" "$(elapsed "$CPP_START")" cpp-build.log
  else
    record cpp_build "SKIPPED(no time)" 0 cpp-build.log
  fi
  mapfile -t CPP_SRCS < <(ls "$REPO"/bench/cpp/bench_*.cu 2>/dev/null | sort)
  T_CPP=$(time_for cpp_bench); CPP_END=$(( $(date +%s) + T_CPP ))
  for i in "${!CPP_SRCS[@]}"; do
    name="$(basename "${CPP_SRCS[$i]}" .cu)"; op="${name#bench_}"
    left=$(( CPP_END - $(date +%s) )); per=$(( left / (${#CPP_SRCS[@]} - i) ))
    bin="$BENCH_BUILD/$name"
    if [[ ! -x "$bin" ]]; then record "cpp:$name" "FAIL(not built)" 0 cpp-build.log; continue; fi
    run "cpp:$name" "$per" "$OUTDIR/cpp-$op.log" "$bin" --json "$OUTDIR/cpp-$op.json"
  done
  (( ${#CPP_SRCS[@]} == 0 )) && record cpp_bench "FAIL(no bench/cpp/bench_*.cu)" 0 "-"
fi

# --- 6. Python benchmarks ------------------------------------------------------------------------
if skipped py_bench; then
  record py_bench "OK(skipped by request)" 0 "-"
else
  mapfile -t PY_BENCH < <(ls "$REPO"/bench/python/bench_*.py 2>/dev/null | sort)
  T_PY=$(time_for py_bench); PY_END=$(( $(date +%s) + T_PY ))
  for i in "${!PY_BENCH[@]}"; do
    name="$(basename "${PY_BENCH[$i]}" .py)"; op="${name#bench_}"
    left=$(( PY_END - $(date +%s) )); per=$(( left / (${#PY_BENCH[@]} - i) ))
    # Soft budget: stop starting cases with time to finish the one in flight and write the JSON.
    soft=$(( per * 2 / 3 )); (( soft < per - 60 )) && soft=$(( per - 60 ))
    run "py:$name" "$per" "$OUTDIR/py-$op.log" "$PYTHON" "${PY_BENCH[$i]}" --device cuda \
      --budget "$soft" --out "$OUTDIR/py-$op.json"
  done
  (( ${#PY_BENCH[@]} == 0 )) && record py_bench "FAIL(no bench/python/bench_*.py)" 0 "-"
fi

# --- 7. summary ---------------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - T0 ))
FAILED=0
while IFS='|' read -r _ st _ _; do [[ "$st" == OK* ]] || FAILED=1; done <"$STEPS"
slug="$(echo "${GPU_NAME:-nogpu}" | tr 'A-Z' 'a-z' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/-$//')"
RESULT_DIR="bench/results/${slug}-$(date -u +%Y%m%d)-${COMMIT:0:8}"
{
  echo "mmm gpu_check summary"
  echo "date:      $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host:      $(hostname)"
  echo "gpu:       ${GPU_NAME:-none} (compute capability ${ARCH})"
  echo "commit:    $COMMIT"
  echo "python:    $PYINFO"
  echo "mmm:       $(aux "$PYTHON" -c 'import mmm; print(getattr(mmm, "__version__", "?"), mmm.__file__)' 2>&1 | tail -n1)"
  echo "build:     ${BUILD_S}s (pip install, MMM_CUDA_ARCHS=$ARCH, $NPROC jobs)"
  echo "total:     ${TOTAL}s of a ${BUDGET}s budget"
  echo "result:    $([[ $FAILED -eq 0 ]] && echo PASS || echo FAIL)"
  echo "commit results to: $RESULT_DIR/"
  echo
  printf '%-28s %-24s %8s  %s\n' step status seconds log
  while IFS='|' read -r n s t l; do printf '%-28s %-24s %8s  %s\n' "$n" "$s" "$t" "$l"; done <"$STEPS"
  echo
  for f in "$OUTDIR"/pytest-*.log; do
    [[ -f "$f" ]] && echo "$(basename "$f"): $(grep -E '(passed|failed|error|skipped|no tests ran)' "$f" | tail -n1)"
  done
  echo
  echo "== nvidia-smi"
  aux nvidia-smi 2>&1 || echo "nvidia-smi not available"
} >"$OUTDIR/summary.txt"
cat "$OUTDIR/summary.txt"
exit $FAILED
