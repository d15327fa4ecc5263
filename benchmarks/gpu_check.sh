#!/usr/bin/env bash
# The prepared run for a GPU machine (one H100/H200, a CUDA build of torch, nvcc, cmake, ninja,
# scikit-build-core, pybind11, pytest in the system Python; no network). From the repository
# root:
#
#   bash benchmarks/gpu_check.sh            # build with CUDA, run the CUDA tests and benchmarks
#   bash benchmarks/gpu_check.sh --dry-run  # print the steps, their timeouts and commands only
#
# Builds nncme with its CUDA kernels into the system Python (pip install --no-build-isolation),
# checks that the installed package loads them, runs every `cuda`-marked test and the operator
# tests on the cuda device, then each benchmark with --device cuda at sizes that fit, each step
# under its own `timeout` (they sum to under 9 minutes, so the whole run fits in 10). Benchmark
# JSON goes to benchmarks/results/<bench>_cuda.json; logs to $OUT/logs (runs/gpu_check/logs
# without $OUT), and with $OUT set the JSON this run wrote is copied to $OUT/results. A failing
# step is recorded and the next one runs; a summary ends the output, and the exit status is 1
# when any step failed.
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0), OUT,
# GPU_CHECK_BUDGET (seconds for the whole run, default 570: a step never runs past it).

set -u -o pipefail

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    -n | --dry-run) DRY_RUN=1 ;;
    -h | --help)
      sed -n '2,21p' "$0"
      exit 0
      ;;
    *)
      echo "gpu_check.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-570}
LIMIT_SUM=540 # the steps' timeouts must sum to less than this (9 minutes)
KILL_AFTER=5  # seconds between a step's TERM and KILL
if [ -n "${OUT:-}" ]; then LOGS=$OUT/logs; else LOGS=$ROOT/runs/gpu_check/logs; fi

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export NNCME_CUDA=ON               # fail the build rather than build without the CUDA kernels
export NNCME_REQUIRE_EXTENSION=1   # fail an import rather than fall back to the references
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

# name | timeout (s) | command (run by bash -c from the repository root; its output goes to
# $LOGS/<n>_<name>.log). Sizes: the benchmarks' --quick repeats, a short SSA batch list and a
# short trainer run; fisher_solve runs every size on the GPU.
PYTEST="$PY -m pytest -q -p no:cacheprovider"
STEPS=(
  "environment|15|nvidia-smi; $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available()); print(torch.cuda.get_device_name(0))'; nvcc --version; cmake --version | head -1; git rev-parse HEAD 2>/dev/null || echo \"(no git checkout)\""
  "build|190|$PY -m pip install --no-build-isolation --no-deps -v -Cbuild-dir=build/gpu_check ."
  "build_info|20|cd / && $PY -m nncme.cli info && cd '$ROOT' && $PY -c 'import nncme; i = nncme.build_info(); print(nncme.__file__); assert i[\"extension\"] and i[\"cuda\"] and i[\"cuda_available\"], \"CUDA kernels not built or no GPU: %s\" % i'"
  "exceptions|10|cd / && $PY '$ROOT/benchmarks/check_exceptions.py'"
  "tests_cuda_marked|45|$PYTEST -m cuda tests/"
  "tests_ops_on_cuda|60|$PYTEST -m 'not cuda' -k cuda tests/test_ops_nade.py tests/test_ops_transition.py tests/test_ops_fisher.py tests/test_ops_network.py"
  "bench_nade|35|$PY benchmarks/bench_nade.py --device cuda --quick"
  "bench_transition|25|$PY benchmarks/bench_transition.py --device cuda --quick"
  "bench_fisher_solve|35|$PY benchmarks/bench_fisher_solve.py --device cuda"
  "bench_ssa|40|$PY benchmarks/bench_ssa.py --device cuda --trajectories 10000 100000 --repeats 2"
  "bench_trainer|60|$PY benchmarks/bench_trainer.py --device cuda --steps 20 --reference-steps 10 --profile-steps 5 --warmup 2 --pretrain-t 0.03 --pretrain-iterations 10"
)

total=0
for entry in "${STEPS[@]}"; do
  IFS='|' read -r _ limit _ <<<"$entry"
  total=$((total + limit))
done

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check.sh --dry-run: ${#STEPS[@]} steps from $ROOT, logs to $LOGS"
  i=0
  for entry in "${STEPS[@]}"; do
    i=$((i + 1))
    IFS='|' read -r name limit cmd <<<"$entry"
    printf '%2d. %-20s timeout %3s s\n    %s\n' "$i" "$name" "$limit" "$cmd"
  done
  echo "timeouts sum to $total s (must be under $LIMIT_SUM s); whole-run budget $BUDGET s"
  [ "$total" -lt "$LIMIT_SUM" ] || exit 1
  exit 0
fi

mkdir -p "$LOGS" benchmarks/results || exit 2
STAMP=$LOGS/.started
: >"$STAMP"
START=$SECONDS
NAMES=() STATUS=() TIMES=() FILES=()
failed=0

echo "gpu_check.sh: ${#STEPS[@]} steps, timeouts sum to $total s; logs in $LOGS"
i=0
for entry in "${STEPS[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name limit cmd <<<"$entry"
  log=$LOGS/$(printf '%02d' "$i")_$name.log
  left=$((BUDGET - (SECONDS - START) - KILL_AFTER))
  if [ "$left" -lt 10 ]; then
    status="skipped (budget spent)"
    took=0
    failed=1
  else
    [ "$limit" -gt "$left" ] && limit=$left
    echo "[$i/${#STEPS[@]}] $name (timeout $limit s)"
    began=$SECONDS
    {
      echo "\$ $cmd"
      echo
    } >"$log"
    timeout --kill-after="$KILL_AFTER" "$limit" bash -c "$cmd" >>"$log" 2>&1
    rc=$?
    took=$((SECONDS - began))
    case $rc in
      0) status=ok ;;
      124 | 137) status="TIMEOUT after $limit s" ;;
      *) status="FAILED (exit $rc)" ;;
    esac
    [ "$rc" = 0 ] || failed=1
    echo "    $status, $took s"
  fi
  NAMES+=("$name")
  STATUS+=("$status")
  TIMES+=("$took")
  FILES+=("$log")
done

# the JSON this run wrote
mapfile -t written < <(find benchmarks/results -maxdepth 1 -name '*.json' -newer "$STAMP" | sort)
if [ -n "${OUT:-}" ] && [ "${#written[@]}" -gt 0 ]; then
  mkdir -p "$OUT/results" && cp "${written[@]}" "$OUT/results/"
fi

{
  echo
  echo "== gpu_check summary ($((SECONDS - START)) s; $TORCH_CUDA_ARCH_LIST; $(git rev-parse --short HEAD 2>/dev/null))"
  for j in "${!NAMES[@]}"; do
    printf '%-20s %-24s %4s s  %s\n' "${NAMES[$j]}" "${STATUS[$j]}" "${TIMES[$j]}" "${FILES[$j]}"
  done
  echo "JSON written: ${written[*]:-none}"
  [ -n "${OUT:-}" ] && echo "copied to $OUT/results; logs in $LOGS"
  for j in "${!NAMES[@]}"; do
    if [ "${STATUS[$j]}" != ok ] && [ -f "${FILES[$j]}" ]; then
      echo
      echo "-- last lines of ${FILES[$j]}"
      tail -n 15 "${FILES[$j]}"
    fi
  done
  if [ "$failed" = 0 ]; then echo "all steps passed"; else echo "some steps FAILED"; fi
} | tee "$LOGS/summary.txt"
rm -f "$STAMP"
exit "$failed"
