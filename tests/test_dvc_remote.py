"""DVC with a remote: reproduce, push, lose the cache and the outputs, pull, nothing to re-run.

A local folder stands in for the remote (the same commands work with s3://, ssh://, ...).
The project is a fresh git repository copied from this one with the tiny configuration cut
to one seed, one teacher and two students. After the pull, both tools must agree that the
results are current: DVC by content hash, Snakemake after `snakemake --touch` (DVC restores
files with new modification times and Snakemake has no record of jobs it did not run; see
docs/dvc.md).
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, make_project, run, tiny_params
from tests.test_pipeline import check_table, jobs_in_dry_run

WORKFLOW_PROFILE = ["--workflow-profile", "workflow/profiles/default"]


def smallest_params() -> dict:
    params = tiny_params()
    params["seeds"] = [0]
    params["teachers"] = {"video": params["teachers"]["video"]}
    params["students"] = {k: params["students"][k] for k in ("nokd", "c2_crd_final")}
    return params


def git_dvc_project(dest: Path, params: dict) -> Path:
    project = make_project(dest, params)
    run(["git", "init", "-q", "-b", "main"], project)
    run(["git", "config", "user.email", "ci@example.org"], project)
    run(["git", "config", "user.name", "CI"], project)
    run(["dvc", "init", "-q"], project)
    return project


def commit_all(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", message], project)


def cached_outputs(project: Path) -> list[Path]:
    """The outputs DVC keeps in its cache: raw download, prepared data, checkpoints."""
    files = [p for p in project.glob("data/raw/**/*") if p.is_file() and p.name != ".gitignore"]
    return files + list(project.glob("data/prepared/*.h5")) + list(project.glob("results/**/model.pt"))


def dvc_outputs(project: Path) -> dict[str, str]:
    """Cached DVC outputs in the workspace -> md5 of their content."""
    return {str(p.relative_to(project)): hashlib.md5(p.read_bytes()).hexdigest() for p in cached_outputs(project)}


def test_default_profile_compares_checkpoints_by_checksum(monkeypatch):
    """Files restored by DVC are judged by content only under max-checksum-file-size."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(ROOT)
    _, args = parse_args(["-n", "--workflow-profile", "workflow/profiles/default"])
    # paper-size checkpoints are ~10 MB, prepared data at the default lengths ~0.4 GB
    assert args.max_checksum_file_size >= 500_000_000
    assert args.rerun_incomplete and args.printshellcmds
    assert not args.resources, "a resource limit in the workflow profile would also bind cluster runs"


def stages_run(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.mark.e2e
def test_dvc_push_pull_round_trip(tmp_path):
    params = smallest_params()
    project = git_dvc_project(tmp_path / "proj", params)
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "store", str(remote)], project)
    commit_all(project, "tiny project")

    out = run(["dvc", "repro"], project)
    assert {"prepare", "profile", "report", "train_teacher@video-0"} <= stages_run(out), out
    check_table(project, params)
    before = dvc_outputs(project)
    assert any(k.endswith("model.pt") for k in before) and any(k.startswith("data/prepared/") for k in before)
    commit_all(project, "results")

    run(["dvc", "push"], project)
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push left the remote empty"

    # lose what the remote holds: the cache and every cached output (uncached outputs stay:
    # metrics, curves and tables are committed to git)
    shutil.rmtree(project / ".dvc" / "cache")
    for path in cached_outputs(project):
        path.unlink()
    assert "deleted" in run(["dvc", "status"], project)

    time.sleep(1.1)  # restored files must look newer than the results, as on a real clone
    run(["dvc", "pull"], project)
    assert dvc_outputs(project) == before
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project)
    assert stages_run(run(["dvc", "repro"], project)) == set()

    # Snakemake sees checkpoints and data newer than the metrics made from them, and has no
    # record of these jobs: after `dvc status` says up to date, --touch hands over freshness.
    dry = run(["snakemake", "-n", *WORKFLOW_PROFILE, "--cores", "1", "results/table1.csv"], project)
    assert "train_teacher" in jobs_in_dry_run(dry), dry
    run(["snakemake", "--touch", *WORKFLOW_PROFILE, "--cores", "1", "results/table1.csv"], project)
    dry = run(["snakemake", "-n", *WORKFLOW_PROFILE, "--cores", "1", "results/table1.csv"], project)
    assert "Nothing to be done" in dry, dry
    assert dvc_outputs(project) == before  # --touch changed no content

    # from here on Snakemake's records decide: checkpoints and data restored again by DVC
    # (new mtime, same bytes, under max-checksum-file-size) are judged by checksum
    time.sleep(1.1)
    for path in cached_outputs(project):
        path.unlink()
    run(["dvc", "checkout"], project)
    assert dvc_outputs(project) == before
    dry = run(["snakemake", "-n", *WORKFLOW_PROFILE, "--cores", "1", "results/table1.csv"], project)
    assert "Nothing to be done" in dry, dry


@pytest.mark.e2e
def test_dvc_exp_run_set_param(tmp_path):
    params = smallest_params()
    params["students"] = {"nokd": params["students"]["nokd"]}
    project = git_dvc_project(tmp_path / "proj", params)
    commit_all(project, "tiny project")

    out = run(["dvc", "exp", "run", "-n", "one-epoch", "-S", "train.epochs=1"], project)
    assert "train_student@nokd-0" in stages_run(out), out
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == 1
    shown = pd.read_csv(io.StringIO(run(["dvc", "exp", "show", "--no-pager", "--csv"], project)))
    exp = shown[shown.Experiment == "one-epoch"]
    assert len(exp) == 1, shown[["Experiment", "rev"]]
    assert int(exp["train.epochs"].iloc[0]) == 1
    assert int(exp["results/students/nokd/seed0/metrics.json:epochs_run"].iloc[0]) == 1
    base = shown[shown.rev == "main"]
    assert int(base["train.epochs"].iloc[0]) == params["train"]["epochs"] != 1
