"""End to end: the Snakemake pipeline and `dvc repro` on the tiny configuration.

Both run in a temporary copy of the project (for DVC, a fresh git repository), the way a
user runs them; they check the table's rows and that a params change re-runs only what it
should.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmdistill.registry import Registry
from tests.conftest import ROOT, subprocess_env, tiny_params

PROJECT_FILES = ["Snakefile", "dvc.yaml", "workflow", "src", ".dvcignore", ".gitignore", "pyproject.toml"]


def make_project(dest: Path, params: dict) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"), symlinks=True)
        else:
            shutil.copy2(src, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((cwd / "logs").rglob("*.log"))) if (cwd / "logs").exists() else ""
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc.stdout + proc.stderr


def check_table(project: Path, params: dict) -> pd.DataFrame:
    reg = Registry(params)
    table = pd.read_csv(project / "results" / "table1.csv")
    students = set(table[table.network == "Student"].name)
    assert students == set(reg.students)
    teachers = set(table[table.network == "Teacher"].name)
    assert teachers == set(reg.teachers)
    for col in ["acc_mean", "f1_mean", "parameters", "latency_b1_ms"]:
        assert table[col].map(lambda x: math.isfinite(float(x))).all(), col
    assert (table.n_seeds == len(reg.seeds)).all()
    assert (table.acc_mean.between(0, 100)).all()
    md = (project / "results" / "table1.md").read_text()
    assert md.count("| Student |") == len(reg.students)
    return table


def jobs_in_dry_run(out: str) -> list[str]:
    """Rule names and wildcards of the jobs a `snakemake -n` would run."""
    return re.findall(r"^rule (\w+):\s*$", out, flags=re.M)


@pytest.mark.e2e
def test_snakemake_pipeline(tmp_path):
    params = tiny_params()
    project = make_project(tmp_path / "proj", params)
    run(["snakemake", "--cores", "2", "results/table1.csv"], project)
    check_table(project, params)

    # nothing left to do
    out = run(["snakemake", "-n", "--cores", "2", "results/table1.csv"], project)
    assert "Nothing to be done" in out

    # one student's setting changed: that student's runs and the report re-run, nothing else
    params["students"]["nokd"]["alpha"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["snakemake", "-n", "--cores", "2", "results/table1.csv"], project)
    rules = jobs_in_dry_run(out)
    assert sorted(rules) == sorted(["train_student"] * len(params["seeds"]) + ["report"]), out
    assert "students/nokd/" in out and "teachers/" not in out.split("Job stats")[-1].replace("results/teachers", "")


@pytest.mark.e2e
def test_dvc_repro(tmp_path):
    params = tiny_params()
    params["seeds"] = [0]
    keep = {"nokd"}
    params["students"] = {k: v for k, v in params["students"].items() if k in keep or v["teacher"] == "video"}
    params["teachers"] = {"video": params["teachers"]["video"]}
    project = make_project(tmp_path / "proj", params)
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "repro"], project)
    check_table(project, params)

    status = run(["dvc", "status"], project)
    assert "up to date" in status, status

    params["students"]["nokd"]["alpha"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], project)
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    # `profile` tracks the whole students section (DVC cannot select sub-keys across entries)
    assert ran == {"train_student@nokd-0", "profile", "report"}, out
