"""tests/gpu/check.sh end to end, as a dry run on the CPU of a bare node (slow: minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_check_script_dry_run_writes_one_json(tmp_path):
    env = dict(os.environ)
    env.update(OUT=str(tmp_path), MMDISTILL_GPU_CHECK_ALLOW_CPU="1", MMDISTILL_GPU_CHECK_BARE="1", PYTHON="python")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    proc = subprocess.run(
        ["bash", "tests/gpu/check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DRY RUN ON THE CPU" in proc.stdout
    r = json.loads((tmp_path / "gpu-check.json").read_text())
    assert r["check"]["dry_run_on_cpu"] and "snakemake" in r["check"]["modules_missing"]
    assert r["cuda_tests"]["counts"]["failure"] == r["cuda_tests"]["counts"]["error"] == 0
    assert r["cuda_tests"]["counts"]["passed"] > 0
    assert set(r["bench"]["cases"]) == {"teacher", "student_nokd", "student_attention_kd"}
    assert not r["bench"]["errors"] and not r["bench"]["skipped"]
    assert r["projection"]["gpu_hours"] > 0 and r["targets"]["teacher_epoch_s"]


def test_check_script_refuses_to_run_without_a_gpu_unless_asked(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMDISTILL_GPU_CHECK")}
    env.update(OUT=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    proc = subprocess.run(
        ["bash", "tests/gpu/check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "MMDISTILL_GPU_CHECK_ALLOW_CPU=1" in proc.stderr
    assert not (tmp_path / "gpu-check.json").exists()
