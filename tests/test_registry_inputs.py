"""What the registry hands the pipelines beside the parameters: a student's DVC inputs, the
folds input, the missing-input message, checksums and listings of problems."""

from __future__ import annotations

import hashlib
import re

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


def test_subset_keeps_the_rows_named_and_what_they_need(params):
    from mmdistill.registry import ParamsError, apply_subset

    assert apply_subset(params) is params  # no subset: unchanged
    params["subset"] = {"students": ["c5_hinton", "nokd"]}
    out = apply_subset(params)
    assert list(out["students"]) == ["nokd", "c5_hinton"] and list(out["teachers"]) == ["complete"]
    assert set(params["students"]) > {"nokd", "c5_hinton"} and len(params["teachers"]) == 4  # input untouched
    params["subset"] = {"teachers": ["video"]}
    out = apply_subset(params)
    assert list(out["teachers"]) == ["video"]
    assert set(out["students"]) == {
        k for k, v in params["students"].items() if v["teacher"] in (None, "video")
    }  # its students and those without a teacher
    params["subset"] = {"students": ["c2_crd_final"], "teachers": ["video", "audio"]}
    out = apply_subset(params)
    assert list(out["students"]) == ["c2_crd_final"] and list(out["teachers"]) == ["video", "audio"]
    for subset, message in [
        ({"students": ["nope"]}, "subset.students: ['nope'] not among students ("),
        ({"teachers": ["nope"]}, "subset.teachers: ['nope'] not among teachers ("),
        ({"students": ["c5_hinton"], "teachers": ["video"]}, "subset: students ['c5_hinton'] distil from teachers"),
        ({"students": []}, "subset leaves no students"),
        ({"students": ["nokd"]}, "subset leaves no teachers (its students distil from none)"),
    ]:
        params["subset"] = subset
        with pytest.raises(ParamsError, match=re.escape(message)):
            apply_subset(params)


@pytest.mark.parametrize(
    ("variant", "proxy", "ok"),
    [("S", "down", True), ("S", "full", False), ("T", "full", True), ("T", "down", False), (None, "full", False)],
)
def test_edam_variant_and_proxy_must_agree(params, variant, proxy, ok):
    from mmdistill.registry import ParamsError

    entry = params["students"]["c5_edam_s_attn"]
    entry["options"] = {} if variant is None else {"variant": variant}
    entry["proxy"] = proxy
    if ok:
        assert Registry(params).students["c5_edam_s_attn"].proxy == proxy
    else:
        shown = variant or "S"  # the default variant is S
        need = "full" if shown == "T" else "down"
        with pytest.raises(ParamsError) as err:
            Registry(params)
        assert str(err.value) == (
            f"students.c5_edam_s_attn.proxy: EDAM variant {shown} needs proxy '{need}' "
            f"(EDAM-S: the teacher's lengths; EDAM-T: full-length proxies), not '{proxy}'"
        )


def test_regression_refuses_distillvlm_at_the_attention_level_too(params):
    from mmdistill.registry import ParamsError

    params["train"]["objective"] = "regression"
    params["subset"] = {"students": ["c5_distillvlm", "c5_crd_attn"]}
    with pytest.raises(ParamsError, match=r"students\.c5_distillvlm: train\.objective 'regression'.*'distillvlm'"):
        Registry(params)
    params["subset"] = {"students": ["c5_crd_attn"]}
    assert list(Registry(params).students) == ["c5_crd_attn"]


@pytest.mark.parametrize(
    ("source", "dataset", "name"),
    [
        ("synthetic", "mosei", "synthetic/mosei_synthetic.pkl"),
        ("mult_pkl", "mosi", "mult_pkl/mosi_data_noalign.pkl"),
        ("mmsa_pkl", "mosei", "mmsa_pkl/mmsa_mosei_unaligned_50.pkl"),
        ("sdk_csd", "mosei", "sdk_csd"),
    ],
)
def test_raw_input_of_each_source(params, tmp_path, source, dataset, name):
    params["data"]["source"], params["data"]["dataset"] = source, dataset
    reg = Registry(params, root=tmp_path)
    assert reg.raw_input() == reg.data_root / "raw" / name


def test_a_students_share_of_the_training_set_is_in_its_run_params(params):
    params["students"]["nokd"]["train_fraction"] = 0.25
    reg = Registry(params)
    assert reg.run_params(Run("student", "nokd", 0))["student"]["train_fraction"] == 0.25
    assert "train_fraction" not in reg.run_params(Run("student", "c5_hinton", 0))["student"]  # 1: not written
