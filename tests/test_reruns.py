"""Everyday edits rerun only what they change.

Snakemake: an override file (`--configfile`) changes no rule's command, wherever it lies and
wherever the project lies; only the per-run params decide what reruns (dry-run job counts on a
copy of the session's tiny run). DVC: each student stage depends on its own run's inputs
(results/run_params/...), so a change to one method's defaults or to one teacher reruns only
the students that use it. Part of the study runs through `subset` in an override file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project, run, subprocess_env, tiny_params
from tests.test_dvc_remote import commit_all, git_dvc_project, stages_run
from tests.test_pipeline import jobs_in_dry_run

TABLE = "results/table1.csv"


def dry_run(project: Path, *args: str) -> Counter:
    """Jobs a `snakemake -n` would run, counted per rule."""
    out = run(["snakemake", "-n", "--cores", "2", TABLE, *args], project)
    return Counter(jobs_in_dry_run(out))


def write_yaml(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def check_override_plans(finished: Path, row: str, tmp_path: Path) -> None:
    """On a moved copy of the finished project ``finished``: nothing to do; ``row``'s beta
    changed by an override file (outside or inside the project) plans that row's runs and the
    table; an override restating params.yaml plans nothing."""
    project = tmp_path / "moved" / "proj"
    shutil.copytree(finished, project, symlinks=True)  # modification times kept
    assert dry_run(project) == Counter(), "a moved copy of a finished project must plan nothing"
    params = yaml.safe_load((project / "params.yaml").read_text())

    beta = {"students": {row: {"beta": 0.25}}}
    expected = Counter({"train_student": len(params["seeds"]), "report": 1})  # the row's runs, then Table 1
    outside = write_yaml(tmp_path / "beta.yaml", beta)
    assert dry_run(project, "--configfile", str(outside)) == expected
    inside = write_yaml(project / "my-beta.yaml", beta)
    assert dry_run(project, "--configfile", inside.name) == expected
    out = run(["snakemake", "-n", "--cores", "2", TABLE, "--configfile", str(outside)], project)
    planned = set(re.findall(r"output: results/students/(\w+)/seed\d+/model\.pt", out))
    assert planned == {row}, planned

    same = write_yaml(tmp_path / "same.yaml", {"train": {"epochs": params["train"]["epochs"]}})
    assert dry_run(project, "--configfile", str(same)) == Counter()


@pytest.mark.e2e
def test_override_reruns_only_its_row_wherever_project_and_override_lie(tiny_run, tmp_path):
    check_override_plans(tiny_run, "c5_hinton", tmp_path)


def test_subset_override_plans_only_its_rows(tmp_path):
    project = make_project(tmp_path / "proj", tiny_params())
    subset = write_yaml(tmp_path / "subset.yaml", {"seeds": [0], "subset": {"students": ["nokd", "c4_crd_final"]}})
    jobs = dry_run(project, "--configfile", str(subset))
    # data, the one teacher the rows distil from, the two rows, the cost profile, Table 1
    assert jobs == Counter(
        {"download": 1, "prepare": 1, "train_teacher": 1, "train_student": 2, "profile": 1, "report": 1}
    )
    out = run(["snakemake", "-n", "--cores", "2", TABLE, "--configfile", str(subset)], project)
    assert "teachers/audio/seed0" in out and "teachers/complete" not in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"students": {}}, "'students: {}' changes nothing"),
        ({"methods": {"hinton": {"options": {"temprature": 2.0}}}}, "did you mean 'temperature'"),
        ({"students": {"c2_crd_attn": {"options": {"row_bins": 50}}}}, "row_bins: 50 bins of query rows"),
    ],
)
def test_snakemake_dry_run_refuses_a_bad_override_before_any_job(tmp_path, override, message):
    project = make_project(tmp_path / "proj", tiny_params())
    bad = write_yaml(tmp_path / "bad.yaml", override)
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "1", TABLE, "--configfile", str(bad)],
        cwd=project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (project / "results").exists() and not (project / "data").exists()


def dvc_params() -> dict:
    """One seed, two teachers, a Hinton student of each."""
    params = tiny_params()
    params["seeds"] = [0]
    params["train"]["epochs"] = 1
    params["teachers"] = {k: params["teachers"][k] for k in ("video", "audio")}
    params["students"] = {
        "c2_hinton": {"configuration": "video", "teacher": "video", "method": "hinton", "level": "final"},
        "c4_hinton": {"configuration": "audio", "teacher": "audio", "method": "hinton", "level": "final"},
    }
    return params


@pytest.mark.e2e
def test_dvc_reruns_only_the_students_that_use_a_change(tmp_path):
    """The training stages only (their upstream included; profile, report and robustness
    depend on every run and are left out to keep this cheap)."""
    params = dvc_params()
    project = git_dvc_project(tmp_path / "proj", params)
    commit_all(project, "tiny project")
    # A fresh clone: `dvc repro --dry` stops at the first stage whose input an earlier stage
    # would make (DVC needs every dependency on disk to dry-run a stage); `dvc status` lists
    # every stage that `dvc repro` will run (docs/reliability.md).
    dry = subprocess.run(["dvc", "repro", "--dry"], cwd=project, env=subprocess_env(), capture_output=True, text=True)
    assert dry.returncode != 0 and "failed to reproduce 'prepare'" in dry.stderr, dry.stderr
    status = run(["dvc", "status"], project)
    expected = {"download", "prepare", "run_params", "profile", "report", "robustness"}
    expected |= {f"train_teacher@{t}-0" for t in params["teachers"]}
    expected |= {f"train_student@{s}-0" for s in params["students"]}
    assert set(re.findall(r"^(\S+):$", status, flags=re.M)) == expected, status
    assert not (project / "results").exists()

    students = [f"train_student@{s}-0" for s in params["students"]]
    first = stages_run(run(["dvc", "repro", *students], project))
    assert first == expected - {"profile", "report", "robustness"}, first

    # the defaults of a method no student here uses: no student
    params["methods"]["crd"]["options"]["nce_k"] = 16
    write_yaml(project / "params.yaml", params)
    assert stages_run(run(["dvc", "repro", *students], project)) == {"run_params"}

    # one method's default: the rows of that method
    params["methods"]["hinton"]["options"]["temperature"] = 2.0
    write_yaml(project / "params.yaml", params)
    ran = stages_run(run(["dvc", "repro", *students], project))
    assert ran == {"run_params", "train_student@c2_hinton-0", "train_student@c4_hinton-0"}, ran

    # one teacher: it and its students only
    params["teachers"]["audio"]["branches"] = ["A", "L"]
    write_yaml(project / "params.yaml", params)
    ran = stages_run(run(["dvc", "repro", *students], project))
    assert ran == {"train_teacher@audio-0", "run_params", "train_student@c4_hinton-0"}, ran
    assert stages_run(run(["dvc", "repro", *students], project)) == set()


def test_student_inputs_name_the_teacher_checkpoint_checksum(params, tmp_path):
    from mmdistill.registry import Registry, Run

    reg = Registry(params, root=tmp_path)
    teacher = Run("teacher", "video", 0)
    reg.checkpoint(teacher).parent.mkdir(parents=True)
    reg.checkpoint(teacher).write_bytes(b"weights v1")
    first = reg.student_inputs(Run("student", "c2_crd_final", 0))
    assert first["teacher_checkpoint"]["path"] == "results/teachers/video/seed0/model.pt"
    assert re.fullmatch(r"[0-9a-f]{32}", first["teacher_checkpoint"]["md5"])
    reg.checkpoint(teacher).write_bytes(b"weights v2")
    assert reg.student_inputs(Run("student", "c2_crd_final", 0)) != first
    assert reg.student_inputs(Run("student", "nokd", 0))["teacher_checkpoint"] is None


def test_subset_rules(params):
    from mmdistill.registry import ParamsError, Registry

    reg = Registry({**params, "subset": {"teachers": ["audio"]}})
    assert set(reg.teachers) == {"audio"}
    no_kd = {"nokd", "nokd_c1", "nokd_c5_full"}  # every student without a teacher
    assert set(reg.students) == {"c4_crd_final", "c4_crd_penult"} | no_kd  # its students and the no-KD ones
    reg = Registry({**params, "subset": {"students": ["c5_hinton"], "teachers": ["complete", "video"]}})
    assert set(reg.students) == {"c5_hinton"} and set(reg.teachers) == {"complete", "video"}
    with pytest.raises(ParamsError, match=r"subset\.students: \['c9'\] not among students"):
        Registry({**params, "subset": {"students": ["c9"]}})
    with pytest.raises(ParamsError, match=r"subset: students \['c5_hinton'\] distil from teachers that subset"):
        Registry({**params, "subset": {"students": ["c5_hinton"], "teachers": ["video"]}})
    with pytest.raises(ParamsError, match=r"subset leaves no teachers"):
        Registry({**params, "subset": {"students": ["nokd"]}})
