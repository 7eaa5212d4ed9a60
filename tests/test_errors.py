"""Every mistake is one clear message: the CLI prints one line (no traceback) naming what to
fix, exits with 2 (parameters, command line) or 1 (data, download, training, a step run out of
order), and shows the traceback with --debug."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import subprocess_env, tiny_params


def project(tmp_path: Path, params: dict | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    return tmp_path


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI as a process (exit code, stderr as a user sees it)."""
    env = subprocess_env()
    env.pop("MMDISTILL_SNAKEMAKE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "mmdistill", *args, "--quiet"], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture
def step(monkeypatch, caplog):
    """The CLI's main() in this process (cheap: no interpreter and torch start-up per call):
    returns the exit code and the ERROR records' text; an exception escaping main() fails the test."""
    from mmdistill.cli import main

    monkeypatch.delenv("MMDISTILL_SNAKEMAKE_CONFIG", raising=False)

    def call(cwd: Path, *args: str) -> tuple[int, str]:
        monkeypatch.chdir(cwd)
        caplog.clear()
        code = main([*args, "--quiet"])
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == (code != 0), errors
        return code, "\n".join(errors)

    return call


def one_message(result: tuple[int, str], code: int, *needles: str) -> str:
    """The step failed with ``code`` and one ERROR message holding every needle."""
    got, message = result
    assert got == code, (got, message)
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_bad_parameter_is_one_message_exit_2_and_debug_shows_the_traceback(tmp_path):
    params = tiny_params()
    params["train"]["epochz"] = 3
    p = project(tmp_path, params)
    proc = cli(p, "validate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count(" ERROR ") == 1 and "params.yaml is invalid" in proc.stderr
    assert "train: Additional properties are not allowed ('epochz' was unexpected)" in proc.stderr
    assert "[--debug shows the traceback]" in proc.stderr
    debug = cli(p, "validate", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ParamsError" in debug.stderr


def test_number_yaml_reads_as_a_string_gets_a_hint(tmp_path, step):
    p = project(tmp_path)
    (p / "lr.yaml").write_text("train: {lr: 1e-3}\n")
    one_message(
        step(p, "validate", "--override", "lr.yaml"),
        2,
        "params.yaml + lr.yaml is invalid",
        "train.lr: '1e-3' is not of type 'number'; YAML reads 1e-3 as a string",
    )


def test_malformed_yaml_and_missing_override_file(tmp_path, step):
    p = project(tmp_path)
    (p / "bad.yaml").write_text("train:\n  epochs: 3\n lr: [\n")
    one_message(step(p, "validate", "--override", "bad.yaml"), 2, "bad.yaml is not valid YAML", "line 3")
    one_message(step(p, "validate", "--override", "nowhere.yaml"), 2, "override file not found: nowhere.yaml")
    (p / "params.yaml").write_text("seeds: [0\n")
    one_message(step(p, "validate"), 2, "params.yaml is not valid YAML")


def test_empty_mapping_in_an_override_is_refused(tmp_path, step):
    p = project(tmp_path)
    (p / "none.yaml").write_text("students: {}\n")
    one_message(step(p, "validate", "--override", "none.yaml"), 2, "'students: {}' changes nothing", "subset")


def test_typo_in_a_method_option_is_caught_by_validate(tmp_path, step):
    params = tiny_params()
    params["students"]["c5_hinton"]["options"] = {"temprature": 2.0}
    one_message(
        step(project(tmp_path, params), "validate"),
        2,
        "students.c5_hinton.options.temprature: 'hinton' has no option 'temprature' (did you mean 'temperature'?)",
    )


def test_a_step_run_before_the_one_it_needs(tmp_path, step):
    p = project(tmp_path)
    one_message(step(p, "prepare"), 1, "data/raw/synthetic/mosei_synthetic.pkl", "`python -m mmdistill download`")
    one_message(
        step(p, "train", "--role", "student", "--name", "c2_crd_final", "--seed", "0"),
        1,
        "2 input(s) of this step are missing",
        "data/prepared/synthetic.h5  (made by `python -m mmdistill prepare`)",
        "results/teachers/video/seed0/model.pt  (made by `python -m mmdistill train --role teacher --name video",
    )
    one_message(step(p, "report"), 1, "results/profile.json")


def test_download_failure_is_one_message(tmp_path, step):
    params = tiny_params()
    params["data"]["source"] = "mult_pkl"
    params["data"]["mult_pkl"]["urls"] = [f"file://{tmp_path}/nowhere/mosei.pkl"]
    one_message(step(project(tmp_path, params), "download"), 1, "could not download", "nowhere/mosei.pkl")


def test_an_empty_split_is_a_data_error(tmp_path, step):
    """A MulT pickle whose valid split holds no samples: DataError naming the split."""
    from mmdistill.modalities import FEATURE_DIM, FILE_KEY

    def split(n):
        d = {FILE_KEY[m]: np.zeros((n, 4, FEATURE_DIM[m]), np.float32) for m in FEATURE_DIM}
        d["labels"] = np.zeros((n, 1, 1), np.float32)
        return d

    pkl = tmp_path / "mosei.pkl"
    pkl.write_bytes(pickle.dumps({"train": split(8), "valid": split(0), "test": split(4)}))
    params = tiny_params()
    params["data"]["source"] = "mult_pkl"
    params["data"]["mult_pkl"]["path"] = str(pkl)
    p = project(tmp_path / "proj", params)
    assert step(p, "download")[0] == 0
    one_message(step(p, "prepare"), 1, "split 'valid' is empty (0 samples)")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("mmdistill.data.dataset:DataError", 1),
        ("mmdistill.data.download:DownloadError", 1),
        ("mmdistill.train.loop:NonFiniteLossError", 1),
        ("mmdistill.io:CheckpointError", 1),
        ("mmdistill.registry:ParamsError", 2),
    ],
)
def test_known_failures_of_a_training_job_exit_with_one_message(tmp_path, step, monkeypatch, error, code):
    import importlib

    module, name = error.split(":")
    cls = getattr(importlib.import_module(module), name)

    def fails(reg, run, progress=True, **kwargs):
        raise cls(f"{run.id}: what went wrong")

    monkeypatch.setattr("mmdistill.experiment.train_run", fails)
    p = project(tmp_path)
    (p / "data" / "prepared").mkdir(parents=True)
    (p / "data" / "prepared" / "synthetic.h5").touch()  # present (the job's inputs are checked first)
    one_message(step(p, "train", "--role", "teacher", "--name", "video", "--seed", "0"), code, "teachers/video/seed0")


def test_an_unexpected_failure_keeps_its_traceback(tmp_path, step, monkeypatch):
    """Anything else is a bug: it is not dressed up as a user error."""

    def fails(reg, run, progress=True, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr("mmdistill.experiment.train_run", fails)
    p = project(tmp_path)
    (p / "data" / "prepared").mkdir(parents=True)
    (p / "data" / "prepared" / "synthetic.h5").touch()
    with pytest.raises(ZeroDivisionError):
        step(p, "train", "--role", "teacher", "--name", "video", "--seed", "0")


# -------------------------------------------------------------------- non-finite loss
def _nan_after(model, calls: int):
    """Make the model's logits NaN from its ``calls``-th training-mode forward pass on."""
    seen = {"n": 0}

    def hook(module, args, out):
        if module.training:
            seen["n"] += 1
            if seen["n"] >= calls:
                return replace(out, logits=out.logits * float("nan"))
        return out

    model.register_forward_hook(hook)
    return model


@pytest.mark.parametrize("bad_epoch", [1, 2])
def test_non_finite_loss_names_last_pt_only_when_it_exists(tmp_path, bad_epoch):
    from mmdistill.train.loop import NonFiniteLossError
    from tests.test_train import fit, make_model

    resume = tmp_path / "last.pt"
    model = _nan_after(make_model(), calls=1 if bad_epoch == 1 else 4)  # 48 samples: 3 steps per epoch
    with pytest.raises(NonFiniteLossError) as info:
        fit(tmp_path, "last", model=model)  # 3 epochs, resume file tmp_path / "last.pt"
    msg = str(info.value)
    assert f"non-finite at epoch {bad_epoch}, step 1/3" in msg
    if bad_epoch == 1:
        assert not resume.exists() and "last.pt" not in msg and "no checkpoint of this run was written yet" in msg
    else:
        assert resume.exists() and f"the last good checkpoint (after epoch 1) is kept at {resume}" in msg


# -------------------------------------------------------------------- killed writers
_SLOW_WRITER = """
import sys, time
from mmdistill.io import atomic_path
with atomic_path(sys.argv[1], suffix=".png") as tmp:
    tmp.write_bytes(b"")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_leaves_a_temporary_the_next_start_removes(tmp_path):
    from mmdistill.io import clean_temporaries, write_text

    figures = tmp_path / "figures"
    target = figures / "accuracy.png"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(target)], env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p for p in figures.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".accuracy.png.") and not target.exists()

    write_text(target, "png")  # the next write of the same file removes the stray one
    assert sorted(p.name for p in figures.iterdir()) == ["accuracy.png"]

    (figures / ".confusion.png.abcd1234.tmp.png").write_bytes(b"")
    (figures / ".keep").write_text("not ours")
    assert [p.name for p in clean_temporaries(figures)] == [".confusion.png.abcd1234.tmp.png"]
    assert sorted(p.name for p in figures.iterdir()) == [".keep", "accuracy.png"]


def test_report_start_removes_what_a_killed_report_left(tmp_path, step):
    p = project(tmp_path)
    stray = p / "results" / "figures" / ".attention.png.x1y2z3w4.tmp.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    one_message(step(p, "report"), 1, "input(s) of this step are missing")  # nothing to report on yet
    assert not stray.exists()
