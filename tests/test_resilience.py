"""A real training process killed with SIGKILL before its last epoch resumes to the same
numbers; runs side by side in one results tree are bit-identical to runs alone, on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import subprocess_env, tiny_params


def scratch_project(tmp_path: Path, **train) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    params = tiny_params()
    params["data"]["synthetic"].update(n_train=192, n_valid=32, n_test=32)
    params["train"].update(epochs=4, early_stop=4, batch_size=16, **train)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def cli(project: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmdistill", *args, "--quiet"],
        cwd=project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        **kw,
    )


def prepared(tmp_path: Path) -> Path:
    project = scratch_project(tmp_path)
    for step in ("download", "prepare"):
        p = cli(project, step)
        assert p.returncode == 0, p.stderr
    return project


def comparable(metrics_path: Path) -> dict:
    m = json.loads(metrics_path.read_text())
    for k in ("train_seconds", "seconds_per_epoch", "resumed_from_epoch", "timing"):
        m.pop(k)
    return m


TRAIN = ("train", "--role", "teacher", "--name", "video", "--seed", "0")
METRICS = Path("results/teachers/video/seed0/metrics.json")
RESUME = Path("results/teachers/video/seed0/last.pt")


def test_sigkill_then_resume_gives_the_same_metrics(tmp_path):
    project = prepared(tmp_path / "a")
    assert cli(project, *TRAIN).returncode == 0
    reference = comparable(project / METRICS)
    (project / METRICS).unlink()

    proc = subprocess.Popen(
        [sys.executable, "-m", "mmdistill", *TRAIN, "--quiet"],
        cwd=project,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (project / RESUME).exists():  # killed once the first epoch is checkpointed
        assert proc.poll() is None, "training finished before it could be killed; make it longer"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (project / METRICS).exists()

    p = cli(project, *TRAIN)
    assert p.returncode == 0, p.stderr
    resumed = json.loads((project / METRICS).read_text())
    # the kill fell before the last epoch: the resumed process trained at least one epoch itself
    assert 1 <= resumed["resumed_from_epoch"] < resumed["epochs_run"] == reference["epochs_run"]
    assert comparable(project / METRICS) == reference
    assert not (project / RESUME).exists()


def test_concurrent_runs_in_one_results_tree_are_bit_identical_to_sequential(tmp_path):
    """Two training processes at once in the same project (one data file, one results tree,
    sibling run folders), as Snakemake runs jobs side by side, give each run the metrics it
    gets alone."""
    project = prepared(tmp_path / "b")
    jobs = [TRAIN, (*TRAIN[:-1], "1")]  # seeds 0 and 1 of the same teacher
    metrics = [project / METRICS, project / "results/teachers/video/seed1/metrics.json"]
    for job in jobs:
        p = cli(project, *job)
        assert p.returncode == 0, p.stderr
    alone = [comparable(m) for m in metrics]
    assert alone[0] != alone[1]  # two different runs
    for m in metrics:
        m.unlink()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mmdistill", *job, "--quiet"],
            cwd=project,
            env=subprocess_env(),
            stderr=subprocess.PIPE,
        )
        for job in jobs
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert [comparable(m) for m in metrics] == alone
    assert not list(project.glob("results/**/last.pt")) and not list(project.glob("results/**/*.tmp*"))
