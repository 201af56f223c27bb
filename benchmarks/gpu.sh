#!/usr/bin/env bash
# GPU readiness (issue #11 item 5): one script, run from the repository root on a fresh GPU machine.
#
#   bash benchmarks/gpu.sh              # GPU: tests + field / fit / large-N benchmarks, ≤ 8 min
#   bash benchmarks/gpu.sh --dry-run    # CPU, tiny sizes: proves the plumbing (same as GPU_SH_CPU=1)
#
# Steps, each under `timeout` and a global deadline (GPU_SH_BUDGET seconds, default 470), a failed
# or timed-out step does not stop the next one:
#   1. python: $GPU_SH_PYTHON if set; else a venv (.venv-gpu, --system-site-packages): where jax
#      and the other dependencies are preinstalled (an offline GPU image) only
#      `pip install --no-deps --no-build-isolation -e .`, else `pip install -e ".[test,cuda]"`
#      (cuda = jax[cuda12]); PYTHONPATH holds the checkout, so flowlab imports either way;
#   2. env: nvidia-smi, jax.devices(), versions;
#   3. pytest -x -q (the default markers: not slow) on the GPU;
#   4. benchmarks/run.py field (layerwise / sharded / CG adapted-field evaluation, width 512) and fit
#      (adapted flow + discrete steps to C ≤ 1e-10·C(0), width 256) in float64 and float32 at
#      N = 4096 and 16384: one process per (N, dtype), results written after each part;
#   5. benchmarks/large_n.py, when the file exists, with the options its --help offers
#      (--dtype, --ns / --n, --big-n = the largest N, --out; the dry run adds --quick, a small
#      --big-block, one epoch, --no-ode).
# Environment: GPU_SH_PYTHON (a ready python: no venv), GPU_SH_VENV, GPU_SH_BUDGET, GPU_SH_OUT,
# GPU_SH_PYTEST_S (pytest's cap, default 120 s), GPU_SH_ONLY (a regex of step names: rerun only
# those, e.g. 'fit_float32'), GPU_SH_LARGE_N (path of the large-N benchmark).
# Results: benchmarks/results/gpu/ (the dry run: benchmarks/results/gpu/dry_run/): one .log per
# step, the benchmarks' .json/.md, env.txt, steps.tsv, summary.txt and summary.json, and
# figures.md (the benchmark tables together, for the README).
set -u

DRY=${GPU_SH_CPU:-0}
for arg in "$@"; do
  case $arg in
    --dry-run|--cpu) DRY=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
  esac
done
[ -f pyproject.toml ] && [ -d flowlab ] || { echo "run from the repository root" >&2; exit 2; }

START=$(date +%s)
if [ "$DRY" = 1 ]; then
  BUDGET=${GPU_SH_BUDGET:-175}
  OUT=${GPU_SH_OUT:-benchmarks/results/gpu/dry_run}
  NS=(64 128); FIELD_WIDTH=32; FIT_WIDTH=32
  PYTEST_ARGS=(tests/test_sharding.py -k "padding or one_device")
  PYTEST_CAP=50; BENCH_CAP=50; LARGE_CAP=25
  export JAX_PLATFORMS=cpu
else
  BUDGET=${GPU_SH_BUDGET:-470}
  OUT=${GPU_SH_OUT:-benchmarks/results/gpu}
  NS=(4096 16384); FIELD_WIDTH=512; FIT_WIDTH=256
  PYTEST_ARGS=()
  # 10 s env + 120 s tests + 4 × 65 s benchmarks + 2 × 40 s large-N = 470 s
  PYTEST_CAP=${GPU_SH_PYTEST_S:-120}; BENCH_CAP=65; LARGE_CAP=40
fi
DEADLINE=$((START + BUDGET))
mkdir -p "$OUT"
[ -n "${GPU_SH_ONLY:-}" ] || : >"$OUT/steps.tsv"  # a rerun of some steps appends
echo "gpu.sh: dry_run=$DRY budget=${BUDGET}s out=$OUT"

# run_step NAME CAP CMD...: CMD under timeout min(CAP, time left), output to $OUT/NAME.log
run_step() {
  local name=$1 cap=$2; shift 2
  if [ -n "${GPU_SH_ONLY:-}" ] && [ "$name" != setup ] && ! [[ $name =~ $GPU_SH_ONLY ]]; then
    return 0
  fi
  local left=$((DEADLINE - $(date +%s) - 5))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "time budget spent" >>"$OUT/steps.tsv"
    echo "== $name: skipped (time budget spent)"
    return 0
  fi
  local t=$((cap < left ? cap : left)) s rc status
  echo "== $name (timeout ${t}s)"
  s=$(date +%s)
  # SIGINT first: pytest prints its summary, Python unwinds; KILL 10 s later if still alive
  { printf '$'; printf ' %q' "$@"; printf '\n'; } >"$OUT/$name.log"
  timeout -s INT -k 10 "$t" "$@" >>"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - s))" "rc=$rc timeout=${t}s" \
    >>"$OUT/steps.tsv"
  tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
  return 0
}

# ---- 1. python (flowlab also importable from the checkout itself, installed or not)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
setup_python() {
  if [ -n "${GPU_SH_PYTHON:-}" ]; then PY=$GPU_SH_PYTHON; return; fi
  if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; return; fi
  local venv=${GPU_SH_VENV:-.venv-gpu} deps="import jax, equinox, diffrax, lineax, optimistix, optax, jaxtyping, pytest, scipy"
  PY=$venv/bin/python
  if [ -x "$PY" ] && "$PY" -c "$deps; import flowlab" 2>/dev/null; then return; fi
  python3 -m venv --system-site-packages "$venv" || { PY=python3; return 1; }
  if "$PY" -c "$deps" 2>/dev/null; then  # preinstalled (CUDA) jax and the rest: no download
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || true
  else
    local extra=test,cuda
    [ "$DRY" = 1 ] && extra=test
    "$PY" -m pip install -q --retries 1 --timeout 20 -e ".[$extra]"
  fi
}
PY=python3
run_step setup 150 bash -c "$(declare -f setup_python); DRY=$DRY; setup_python; echo PY=\$PY"
PY=$(sed -n 's/^PY=//p' "$OUT/setup.log" | tail -n 1)
[ -n "$PY" ] || PY=python3
echo "python: $PY"

# ---- 2. environment
{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  uname -a
  echo "--- nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    nvidia-smi 2>&1
  else
    echo "nvidia-smi not found"
  fi
  echo "--- jax"
  timeout 120 "$PY" -c "
import jax, platform
print('python', platform.python_version(), 'jax', jax.__version__)
print('backend', jax.default_backend())
print('devices', jax.devices())
" 2>&1
  echo "--- packages"
  timeout 60 "$PY" -m pip list 2>/dev/null | grep -iE "^(jax|jaxlib|jax-cuda|nvidia-cu|equinox|diffrax|lineax|flowlab)" || true
} >"$OUT/env.txt" 2>&1
BACKEND=$(sed -n 's/^backend //p' "$OUT/env.txt")
echo "backend: ${BACKEND:-unknown}"
[ "$DRY" = 1 ] || [ "$BACKEND" = gpu ] || echo "WARNING: jax backend is '${BACKEND:-unknown}', not gpu"

# ---- 3. test suite
run_step pytest "$PYTEST_CAP" "$PY" -m pytest -x -q -p no:cacheprovider --durations=15 \
  "${PYTEST_ARGS[@]}"

# ---- 4. field / fit benchmarks: one process per (N, dtype); run.py writes after each part
for n in "${NS[@]}"; do
  for dt in float64 float32; do
    run_step "bench_${dt}_n$n" "$BENCH_CAP" "$PY" benchmarks/run.py --only field,fit --dtype "$dt" \
      --ns "$n" --widths "$FIELD_WIDTH" --max-seconds 20 \
      --strategies "layerwise+cholesky,sharded+cholesky,cg (matrix-free)" \
      --fit-n "$n" --fit-width "$FIT_WIDTH" --fit-methods adapted,discrete --fit-repeats 1 \
      --tag "gpu_${dt}_n$n" --out "$OUT"
  done
done

# ---- 5. large-N route (another module; only when it exists), with the options it offers
LARGE_N=${GPU_SH_LARGE_N:-benchmarks/large_n.py}
if [ -f "$LARGE_N" ]; then
  HELP=$(timeout 60 "$PY" "$LARGE_N" --help 2>&1 || true)
  has() { grep -q -- "$1" <<<"$HELP"; }
  cap=$LARGE_CAP
  has "--dtype" || cap=$((2 * LARGE_CAP))  # one dtype only: it gets both slots
  for dt in float64 float32; do
    if ! has "--dtype" && [ "$dt" = float32 ]; then continue; fi
    args=()
    has "--dtype" && args+=(--dtype "$dt")
    if has "--ns"; then args+=(--ns "$(IFS=,; echo "${NS[*]}")")
    elif has "--n "; then args+=(--n "${NS[-1]}"); fi
    has "--big-n" && args+=(--big-n "${NS[-1]}")
    has "--out" && args+=(--out "$OUT/large_n_$dt")
    if [ "$DRY" = 1 ]; then
      has "--quick" && args+=(--quick)
      has "--big-block" && args+=(--big-block 32)
      has "--big-epochs" && args+=(--big-epochs 1)
      has "--no-ode" && args+=(--no-ode)
    fi
    run_step "large_n_$dt" "$cap" "$PY" "$LARGE_N" "${args[@]}"
  done
else
  printf '%s\t%s\t0\t%s\n' large_n skipped "$LARGE_N not present" >>"$OUT/steps.tsv"
  echo "== large_n: skipped ($LARGE_N not present)"
fi

# ---- summary
TOTAL=$(($(date +%s) - START))
{
  echo "# GPU run: $(date -u +'%Y-%m-%d %H:%M UTC'), dry_run=$DRY, backend ${BACKEND:-unknown}"
  echo
  for f in "$OUT"/*gpu_*.md "$OUT"/large_n_*/*.md; do
    [ -f "$f" ] || continue
    echo "## ${f#"$OUT"/}"
    echo
    cat "$f"
    echo
  done
} >"$OUT/figures.md"
{
  echo "gpu.sh summary: dry_run=$DRY backend=${BACKEND:-unknown} total ${TOTAL}s (budget ${BUDGET}s)"
  printf '%-26s %-8s %6s  %s\n' step status seconds note
  while IFS=$'\t' read -r name status secs note; do
    printf '%-26s %-8s %6s  %s\n' "$name" "$status" "$secs" "$note"
  done <"$OUT/steps.tsv"
  grep -E "(passed|failed|error|no tests ran)" "$OUT/pytest.log" 2>/dev/null | tail -n 1 \
    | sed 's/^/pytest: /'
  echo "results: $OUT ($(ls "$OUT"/*.json 2>/dev/null | wc -l) json files)"
} | tee "$OUT/summary.txt"
"$PY" - "$OUT" "$TOTAL" "$DRY" "${BACKEND:-unknown}" <<'EOF' 2>/dev/null || true
import json, sys
from pathlib import Path
out, total, dry, backend = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
steps = [dict(zip(("step", "status", "seconds", "note"), line.split("\t")))
         for line in (out / "steps.tsv").read_text().splitlines() if line.strip()]
for s in steps:
    s["seconds"] = int(s["seconds"])
summary = {"dry_run": dry, "backend": backend, "total_seconds": total, "steps": steps,
           "results": sorted(p.name for p in out.glob("*.json") if p.name != "summary.json")}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
EOF
exit 0
