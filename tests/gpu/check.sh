#!/usr/bin/env bash
# One-command GPU check: the CUDA tests and the GPU benchmark at the paper preset, one JSON.
#
#   PYTHONPATH=src tests/gpu/check.sh            # from the root of a checkout, on a GPU node
#
# Needs python with torch (CUDA build), numpy, h5py, pandas, pyyaml, scipy; pytest for the tests
# (without it the tests are reported as not run and the benchmark still runs). No snakemake,
# dvc, jsonschema or network. Writes ${OUT:-results}/gpu-check.json and prints its figures.
# Takes under 8 minutes: tests <= 120 s, benchmark <= 300 s (a 200 s budget for starting sections;
# the benchmark's JSON is written after every section, so a run stopped at 300 s keeps its figures).
#
# Environment:
#   OUT                            folder of gpu-check.json (default: results)
#   MMDISTILL_GPU_CHECK_ALLOW_CPU=1  dry run without a GPU: the CPU variants of the tests and
#                                  the benchmark on the CPU at tests/tiny.yaml's sizes
#   MMDISTILL_GPU_CHECK_BARE=1     block snakemake, dvc, jsonschema, tqdm, sklearn, matplotlib
#                                  (tests/gpu/bare/sitecustomize.py) to prove they are not needed
#   MMDISTILL_GPU_CHECK_TESTS_TIMEOUT, MMDISTILL_GPU_CHECK_BENCH_TIMEOUT  limits in seconds
#   PYTHON                         interpreter (default: python, else python3)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${MMDISTILL_GPU_CHECK_BARE:-0}" == 1 ]]; then
  export PYTHONPATH="$ROOT/tests/gpu/bare:$PYTHONPATH"
fi
OUT_DIR="${OUT:-results}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s)

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "check.sh: '$PY' cannot import torch" >&2; exit 2
fi
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda; DRY=0
  PARAMS=(--params params.yaml --override params-paper.yaml)
  BENCH_ARGS=(--gpu-steps 10 --budget-s 200 --compile-modes reduce-overhead)
  TEST_SELECT=(-m cuda)
  TESTS_TIMEOUT=${MMDISTILL_GPU_CHECK_TESTS_TIMEOUT:-120}; BENCH_TIMEOUT=${MMDISTILL_GPU_CHECK_BENCH_TIMEOUT:-300}
elif [[ "${MMDISTILL_GPU_CHECK_ALLOW_CPU:-0}" == 1 ]]; then
  DEVICE=cpu; DRY=1
  echo "check.sh: no CUDA device; dry run on the CPU (MMDISTILL_GPU_CHECK_ALLOW_CPU=1): figures describe this CPU" >&2
  PARAMS=(--params params.yaml --override tests/tiny.yaml)
  # every section once at tiny sizes, one thread; a loaded CPU may take long: no 8-minute limit here
  BENCH_ARGS=(--gpu-steps 1 --budget-s 3000 --compile-modes none)
  TEST_SELECT=(-m "not cuda")
  TESTS_TIMEOUT=${MMDISTILL_GPU_CHECK_TESTS_TIMEOUT:-1800}; BENCH_TIMEOUT=${MMDISTILL_GPU_CHECK_BENCH_TIMEOUT:-3600}
  export OMP_NUM_THREADS=1
else
  echo "check.sh: no CUDA device (torch.cuda.is_available() is False); set MMDISTILL_GPU_CHECK_ALLOW_CPU=1 for a dry run on the CPU" >&2
  exit 2
fi

echo "== CUDA tests ($DEVICE)" >&2
TESTS_RC=-1
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout "$TESTS_TIMEOUT" "$PY" -m pytest tests/test_cuda.py "${TEST_SELECT[@]}" -q -rs -p no:cacheprovider \
    --junitxml="$WORK/tests.xml" 2>&1 | tee "$WORK/tests.log" >&2
  TESTS_RC=${PIPESTATUS[0]}
else
  echo "check.sh: pytest is not installed: the CUDA tests are not run (pip install pytest)" | tee "$WORK/tests.log" >&2
fi

echo "== GPU benchmark ($DEVICE)" >&2
timeout "$BENCH_TIMEOUT" "$PY" -m mmdistill bench "${PARAMS[@]}" --what gpu --device "$DEVICE" "${BENCH_ARGS[@]}" \
  --out "$WORK/bench" 2>&1 | tee "$WORK/bench.log" >&2
BENCH_RC=${PIPESTATUS[0]}

"$PY" - "$WORK" "$OUT_DIR/gpu-check.json" "$DEVICE" "$DRY" "$TESTS_RC" "$BENCH_RC" "$T0" "${PARAMS[3]}" <<'PYEOF'
import json, os, sys, time, platform
import xml.etree.ElementTree as ET
work, out, device, dry, tests_rc, bench_rc, t0, override = sys.argv[1:]
blocked = []
for name in ("snakemake", "dvc", "jsonschema", "tqdm", "sklearn", "matplotlib"):
    try:
        __import__(name)
    except ImportError:
        blocked.append(name)
tests = {"returncode": int(tests_rc)}
xml_path = os.path.join(work, "tests.xml")
if os.path.exists(xml_path):
    suite = ET.parse(xml_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = suite.findall("testcase")
    def status(c):
        for tag in ("failure", "error", "skipped"):
            if c.find(tag) is not None:
                return tag
        return "passed"
    tests["counts"] = {k: sum(status(c) == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
    tests["not_passed"] = {c.get("name"): status(c) for c in cases if status(c) in ("failure", "error")}
    tests["skip_reasons"] = sorted({(c.find("skipped").get("message") or "") for c in cases if status(c) == "skipped"})
else:
    tests["note"] = open(os.path.join(work, "tests.log")).read()[-2000:]
bench_path = os.path.join(work, "bench.json")
bench = json.load(open(bench_path)) if os.path.exists(bench_path) else {"error": open(os.path.join(work, "bench.log")).read()[-4000:]}
projection = bench.pop("projection", None)
if "targets" not in bench and "cases" in bench:  # the benchmark was stopped before its targets
    from mmdistill.gpu_bench import targets
    bench["targets"] = targets(bench)
if projection is None and "cases" in bench:  # the benchmark was stopped before its projection
    try:
        from mmdistill.gpu_cost import project
        from mmdistill.registry import Registry
        projection = project(bench, Registry.from_file("params.yaml", overrides=[override]))
    except Exception as exc:
        projection = {"error": f"{type(exc).__name__}: {exc}"}
result = {
    "check": {
        "device": device,
        "dry_run_on_cpu": dry == "1",
        "host": platform.node(),
        "python": platform.python_version(),
        "modules_missing": blocked,
        "bench_returncode": int(bench_rc),
        "seconds": time.time() - float(t0),
    },
    "cuda_tests": tests,
    "targets": bench.get("targets"),
    "projection": projection,
    "bench": bench,
}
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out + ".tmp", "w") as f:
    json.dump(result, f, indent=2, default=str)
os.replace(out + ".tmp", out)
# the figures
print(f"GPU check on {bench.get('device_name', device)}{' (DRY RUN ON THE CPU)' if dry == '1' else ''}: {out}")
print(f"  tests: {tests.get('counts', tests.get('note', '')[:200])}")
for name, v in bench.get("matmul_tflops", {}).items():
    print(f"  matmul {name}: {v:.1f} TFLOP/s")
for case, precs in bench.get("cases", {}).items():
    for prec, c in precs.items():
        mem = "" if c.get("peak_mem_mb") is None else f", peak {c['peak_mem_mb']:.0f} MiB"
        print(f"  {case:22} {prec}: {c['samples_per_s']:9.1f} samples/s, {100 * c['share_of_bf16_matmul']:.2f}% of bf16 matmul{mem}")
for case, e in bench.get("launch", {}).items():
    print(f"  launch {case}: kernels/step {e.get('kernels_per_step')}, device busy fraction {e.get('device_busy_fraction')}, step x{e.get('step_time_ratio_batch_x4', float('nan')):.2f} for 4x batch")
for case, modes in bench.get("compile", {}).items():
    for mode, e in modes.items():
        print(f"  compile {case} {mode}: gain {e.get('gain')}, compiled in {e.get('compile_s', 0):.0f} s, fell back: {e.get('fell_back_to_eager')}")
t = bench.get("targets") or {}
print(f"  targets: teacher epoch s {t.get('teacher_epoch_s')}, attn-KD/no-KD {t.get('attention_kd_over_nokd')}, bf16 speed-up {t.get('bf16_over_fp32_speedup')}, met {t.get('met')}")
if projection and "gpu_hours" in projection:
    print(f"  projected GPU-hours of the study: {projection['gpu_hours']:.1f} ({projection['runs']} runs)")
if bench.get("errors"):
    print(f"  errors: {list(bench['errors'])}")
print(f"  {time.time() - float(t0):.0f} s")
PYEOF
[[ "$BENCH_RC" == 0 && ( "$TESTS_RC" == 0 || "$TESTS_RC" == -1 ) ]]
