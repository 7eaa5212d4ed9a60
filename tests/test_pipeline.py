"""End to end: the Snakemake pipeline and `dvc repro` on the tiny configuration.

Both run in a temporary copy of the project (for DVC, a fresh git repository), the way a
user runs them; they check the table's rows and that a params change re-runs only what it
should.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmdistill.registry import Registry
from tests.conftest import make_project, run, tiny_params


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
def test_snakemake_pipeline(tiny_run, tmp_path):
    params = yaml.safe_load((tiny_run / "params.yaml").read_text())  # what the session's run used
    # the session's tiny run (tests/conftest.py), copied with its mtimes: this test changes params
    project = tmp_path / "proj"
    shutil.copytree(tiny_run, project, symlinks=True)
    table = check_table(project, params)

    # beyond Table 1: the MSD and DistillVLM rows follow Hinton KD in configuration 5's group,
    # without a paper value; MSD logs its modality weights per epoch
    extra = ["c5_msd_population", "c5_msd_instance", "c5_msd_meta", "c5_distillvlm"]
    group = table[table.group == table.loc[table.name == "c5_hinton", "group"].iloc[0]]
    names = list(group.name)
    assert names[names.index("c5_hinton") + 1 : names.index("c5_hinton") + 5] == extra
    assert table[table.name.isin(extra)].paper_acc.isna().all()
    assert group.loc[group.name == "c5_msd_meta", "description"].str.contains("MSD").all()
    curves = pd.read_csv(project / "results" / "students" / "c5_msd_meta" / "seed0" / "curves.csv")
    assert {"kd_w_V", "kd_w_A", "kd_w_L"} <= set(curves.columns)
    assert curves[["kd_w_V", "kd_w_A", "kd_w_L"]].sum(axis=1).sub(1).abs().max() < 1e-4

    # the robustness table: every teacher under every condition, beside the students
    run(["snakemake", "--cores", "2", "results/robustness.csv"], project)
    rob = pd.read_csv(project / "results" / "robustness.csv")
    assert set(rob[rob.network == "Teacher"].name) == set(params["teachers"])
    assert set(rob.missing) == {"none", "A", "L", "A+L"} and set(rob.fill) == {"zero", "mean"}
    assert len(rob[rob.network == "Teacher"]) == 7 * len(params["teachers"])
    assert "nokd" in set(rob[rob.network == "Student"].name) and (rob.n_seeds == len(params["seeds"])).all()
    assert (project / "results" / "robustness.md").read_text().count("| Teacher '") == 2 * len(params["teachers"])

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
    # `run_params` rewrites every student run's inputs file; only nokd's changed
    # `robustness` reads the students' metrics (the best distilled student may change)
    assert ran == {"run_params", "train_student@nokd-0", "profile", "report", "robustness"}, out
