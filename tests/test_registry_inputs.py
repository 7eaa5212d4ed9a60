"""What the registry hands the pipelines beside the parameters: a student's DVC inputs, the
folds input, the missing-input message, checksums and listings of problems."""

from __future__ import annotations

import hashlib

import pytest

from mmdistill.registry import MissingInputError, Registry, Run, _listing, file_md5


def test_student_inputs_hold_its_params_and_its_teachers_checkpoint(params, tmp_path):
    reg = Registry(params, root=tmp_path)
    run = Run("student", "c5_hinton", reg.seeds[0])
    ckpt = reg.checkpoint(reg.teacher_run(run))
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"teacher weights")
    got = reg.student_inputs(run)
    assert got == {
        "params": reg.run_params(run),
        "teacher_checkpoint": {
            "path": f"results/teachers/complete/seed{reg.seeds[0]}/model.pt",
            "md5": hashlib.md5(b"teacher weights").hexdigest(),
        },
    }
    nokd = Run("student", "nokd", reg.seeds[0])
    assert reg.student_inputs(nokd) == {"params": reg.run_params(nokd), "teacher_checkpoint": None}
    assert reg.run_params_file(run) == tmp_path / "results" / "run_params" / "students" / "c5_hinton" / (
        f"seed{reg.seeds[0]}.json"
    )


def test_file_md5_of_a_file_larger_than_one_read(tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert file_md5(tmp_path / "f") == hashlib.md5(data).hexdigest()
    assert file_md5(str(tmp_path / "f")) == hashlib.md5(data).hexdigest()


def test_folds_input_only_for_the_sdk_source_without_the_hash_split(params, tmp_path):
    assert Registry(params, root=tmp_path).folds_files() == [] and not Registry(params).hash_split()
    params["data"]["source"] = "sdk_csd"
    params["data"]["sdk_csd"]["folds"] = "folds/mine.json"
    reg = Registry(params, root=tmp_path)
    assert reg.folds_files() == [tmp_path / "folds" / "mine.json"] and not reg.hash_split()
    params["data"]["sdk_csd"]["hash_split"] = True
    reg = Registry(params, root=tmp_path)
    assert reg.hash_split() and reg.folds_files() == []
    params["data"]["source"] = "mult_pkl"  # the flag belongs to the SDK source only
    assert not Registry(params, root=tmp_path).hash_split()


def test_missing_inputs_are_listed_with_the_step_that_makes_them(params, tmp_path):
    reg = Registry(params, root=tmp_path)
    (tmp_path / "here").write_text("x")
    reg.require([(tmp_path / "here", "download")])  # present: no error
    with pytest.raises(MissingInputError) as err:
        reg.require([(tmp_path / "here", "download"), (tmp_path / "a.h5", "prepare")])
    assert str(err.value) == (
        f"1 input(s) of this step are missing:\n  {tmp_path / 'a.h5'}  (made by `python -m mmdistill prepare`)\n"
        "Run the steps in order: `snakemake` or `dvc repro` does."
    )
    many = [(tmp_path / f"m{i}", "train") for i in range(12)]
    with pytest.raises(MissingInputError) as err:
        reg.require(many)
    text = str(err.value)
    assert text.startswith("12 input(s) of this step are missing:\n")
    assert f"{tmp_path / 'm9'}  (made by" in text and f"{tmp_path / 'm10'}" not in text
    assert "\n  ... and 2 more\n" in text


def test_one_problem_on_one_line_several_listed():
    assert _listing("methods.crd.options", ["nce_k: must be > 0"]) == "methods.crd.options.nce_k: must be > 0"
    assert _listing("methods.crd.options", ["a", "b"]) == "methods.crd.options:\n  a\n  b"
