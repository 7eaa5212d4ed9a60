"""The registry's contract with both pipelines: every output path, what determines a run (its
rerun trigger and resume hash), what determines an architecture, and the checks a student
entry must pass. Expectations are written out from params.yaml's documented layout."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mmdistill.registry import ParamsError, Registry, Run, deep_merge, params_hash, validate_schema
from tests.conftest import ROOT


def test_every_output_path(params, tmp_path):
    reg = Registry(params, root=tmp_path)
    r = Run("student", "c5_hinton", 1)
    t = Run("teacher", "audio", 0)
    run_dir = tmp_path / "results" / "students" / "c5_hinton" / "seed1"
    assert reg.run_dir(r) == run_dir
    assert reg.run_dir(t) == tmp_path / "results" / "teachers" / "audio" / "seed0"
    assert reg.checkpoint(r) == run_dir / "model.pt"
    assert reg.resume_checkpoint(r) == run_dir / "last.pt"
    assert reg.metrics(r) == run_dir / "metrics.json"
    assert reg.curves(r) == run_dir / "curves.csv"
    assert reg.run_outputs(r) == {
        "checkpoint": run_dir / "model.pt",
        "metrics": run_dir / "metrics.json",
        "curves": run_dir / "curves.csv",
    }
    assert reg.log(r) == tmp_path / "logs" / "students" / "c5_hinton" / "seed1.log"
    assert reg.profile() == tmp_path / "results" / "profile.json"
    assert reg.table() == tmp_path / "results" / "table1.csv"
    assert reg.table("md") == tmp_path / "results" / "table1.md"
    assert reg.figures_dir() == tmp_path / "results" / "figures"
    assert reg.robustness() == tmp_path / "results" / "robustness.csv"
    assert reg.robustness("md") == tmp_path / "results" / "robustness.md"
    assert reg.source == "synthetic"
    assert reg.raw_dir() == tmp_path / "data" / "raw" / "synthetic"
    assert reg.raw_input() == tmp_path / "data" / "raw" / "synthetic" / "mosei_synthetic.pkl"
    assert reg.prepared() == tmp_path / "data" / "prepared" / "synthetic.h5"
    assert reg.data_summary() == tmp_path / "data" / "prepared" / "synthetic.summary.json"


@pytest.mark.parametrize(
    "source, raw",
    [("mult_pkl", "data/raw/mult_pkl/mosei_senti_data_noalign.pkl"), ("sdk_csd", "data/raw/sdk_csd")],
)
def test_raw_input_and_prepared_of_each_source(params, source, raw):
    params["data"]["source"] = source
    reg = Registry(params)
    assert reg.raw_input() == Path(raw)
    assert reg.prepared() == Path(f"data/prepared/{source}.h5")
    assert reg.data_summary() == Path(f"data/prepared/{source}.summary.json")


def test_targets_are_every_final_output(params):
    params["seeds"] = [3, 5]
    reg = Registry(params)
    want = {
        "data/prepared/synthetic.h5",
        "data/prepared/synthetic.summary.json",
        "results/profile.json",
        "results/table1.csv",
        "results/table1.md",
        "results/robustness.csv",
        "results/robustness.md",
    }
    for role, names in (("teachers", params["teachers"]), ("students", params["students"])):
        for name in names:
            for seed in (3, 5):
                want |= {f"results/{role}/{name}/seed{seed}/{f}" for f in ("model.pt", "metrics.json", "curves.csv")}
    targets = [p.as_posix() for p in reg.targets()]
    assert len(targets) == len(set(targets)) and set(targets) == want


def test_runs_by_role_in_params_order(params):
    params["seeds"] = [2, 0]
    reg = Registry(params)
    teachers = [(n, s) for n in params["teachers"] for s in (2, 0)]
    students = [(n, s) for n in params["students"] for s in (2, 0)]
    assert [(r.name, r.seed) for r in reg.runs("teacher")] == teachers
    assert [(r.name, r.seed) for r in reg.runs("student")] == students
    assert list(reg.runs()) == list(reg.runs("teacher")) + list(reg.runs("student"))
    assert {r.role for r in reg.runs("teacher")} == {"teacher"}
    assert Run("teacher", "video", 2).id == "teachers/video/seed2"


def test_teacher_run_and_spec(params):
    reg = Registry(params)
    assert reg.teacher_run(Run("student", "c2_crd_final", 1)) == Run("teacher", "video", 1)
    assert reg.teacher_run(Run("student", "c5_hinton", 0)) == Run("teacher", "complete", 0)
    assert reg.teacher_run(Run("student", "nokd", 0)) is None
    assert reg.teacher_run(Run("teacher", "video", 0)) is None
    assert reg.spec(Run("teacher", "language", 0)).branches == ("L",)
    assert reg.spec(Run("student", "nokd", 0)).method == "none"
    with pytest.raises(ParamsError, match=r"students\.nobody: no such student \(known: \['c1_edam_s_attn'"):
        reg.spec(Run("student", "nobody", 0))
    with pytest.raises(ParamsError, match=r"teachers\.nokd: no such teacher"):
        reg.spec(Run("teacher", "nokd", 0))


def test_student_entries_take_method_defaults_and_overrides(params):
    params["students"]["mine"] = {
        "configuration": "video",
        "teacher": "video",
        "method": "crd",
        "level": "final",
        "beta": 0.25,
        "options": {"nce_k": 7},
    }
    reg = Registry(params)
    s = reg.students["mine"]
    defaults = params["methods"]["crd"]
    assert (s.name, s.configuration, s.teacher, s.method, s.level) == ("mine", "video", "video", "crd", "final")
    assert s.alpha == defaults["alpha"] and s.beta == 0.25
    assert dict(s.options) == {**defaults["options"], "nce_k": 7}
    assert s.distils and not reg.students["nokd"].distils
    assert reg.students["c5_edam_t_attn"].proxy == "full" and reg.students["c5_edam_s_attn"].proxy == "down"
    assert reg.students["c5_crd_attn"].proxy == "down"
    assert params["students"]["mine"]["options"] == {"nce_k": 7}  # params are not modified


def test_method_without_defaults_is_named(params):
    del params["methods"]["hinton"]
    with pytest.raises(ParamsError, match=r"students\.c5_hinton\.method: no defaults for 'hinton' under methods"):
        Registry(params)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"method": "none", "teacher": "complete", "level": None}, r"students\.x: method 'none' takes teacher: null"),
        ({"method": "none", "teacher": None, "level": "final"}, r"students\.x: method 'none' takes teacher: null"),
        ({"method": "crd", "teacher": None, "level": "final"}, r"students\.x\.teacher: method 'crd' needs a teacher"),
        ({"method": "crd", "teacher": "complete", "level": None}, r"students\.x\.level: method 'crd' needs a level"),
    ],
)
def test_teacher_and_level_must_fit_the_method(params, entry, message):
    params["students"]["x"] = {"configuration": "language_audio", **entry}
    with pytest.raises(ParamsError, match=message):
        Registry(params)


def test_post_attention_needs_the_teachers_transformers(params):
    params["students"]["x"] = {
        "configuration": "language_audio",
        "teacher": "audio",
        "method": "crd",
        "level": "post_attention",
    }
    with pytest.raises(ParamsError, match=r"students\.x\.teacher: teacher 'audio' \(branches \['A'\]\) lacks"):
        Registry(params)
    params["students"]["x"]["level"] = "final"  # logits need no transformer of the teacher
    assert Registry(params).students["x"].teacher == "audio"


def test_run_params_hold_what_determines_a_run(params):
    reg = Registry(params)
    d = params["data"]
    data = {
        "source": "synthetic",
        "dataset": d["dataset"],
        "label_rule": d["label_rule"],
        "lengths": d["lengths"],
        "synthetic": d["synthetic"],
    }
    assert reg.data_identity() == data
    assert reg.run_params(Run("teacher", "video", 1)) == {
        "run": "teachers/video/seed1",
        "seed": 1,
        "data": data,
        "model": params["model"],
        "train": params["train"],
        "teacher": {"branches": ["V"]},
    }
    crd = params["methods"]["crd"]
    assert reg.run_params(Run("student", "c5_crd_attn", 0)) == {
        "run": "students/c5_crd_attn/seed0",
        "seed": 0,
        "data": data,
        "model": params["model"],
        "train": params["train"],
        "student_modality": "V",
        "student": {
            "configuration": "language_audio",
            "method": "crd",
            "level": "attention",
            "alpha": crd["alpha"],
            "beta": crd["beta"],
            "options": crd["options"],
            "teacher": "complete",
        },
        "teacher": {"name": "complete", "branches": ["V", "A", "L"]},
    }
    nokd = reg.run_params(Run("student", "nokd", 0))
    assert "teacher" not in nokd and nokd["student"]["teacher"] is None and nokd["student"]["method"] == "none"


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["data"]["lengths"].update(V=p["data"]["lengths"]["V"] + 1),
        lambda p: p["data"]["synthetic"].update(seed=p["data"]["synthetic"]["seed"] + 1),
        lambda p: p["model"].update(d_model=16),
        lambda p: p["train"].update(lr=0.5),
        lambda p: p.update(student_modality="A"),
        lambda p: p["methods"]["crd"]["options"].update(nce_k=3),
        lambda p: p["teachers"]["complete"].update(branches=["V", "L", "A"]),
    ],
)
def test_any_setting_of_a_run_changes_its_params(params, change):
    run = Run("student", "c5_crd_attn", 0)
    before = Registry(copy.deepcopy(params)).run_params(run)
    change(params)
    after = Registry(params).run_params(run)
    assert after != before and params_hash(after) != params_hash(before)


def test_architecture_params(params):
    reg = Registry(params)
    arch = reg.architecture_params()
    assert arch == {
        "model": params["model"],
        "lengths": params["data"]["lengths"],
        "student_modality": "V",
        "profile": params["profile"],
        "teachers": {k: v["branches"] for k, v in params["teachers"].items()},
        "students": {k: [v["configuration"], reg.students[k].proxy] for k, v in params["students"].items()},
    }
    params["train"]["lr"] = 0.5  # training settings do not change an architecture
    assert Registry(params).architecture_params() == arch


def test_params_hash_is_stable_and_order_free():
    a = {"x": 1, "y": [1, 2], "z": {"b": 2, "a": 1}}
    b = {"z": {"a": 1, "b": 2}, "y": [1, 2], "x": 1}
    assert params_hash(a) == params_hash(b)
    assert len(params_hash(a)) == 16 and int(params_hash(a), 16) >= 0
    assert params_hash(a) != params_hash({**a, "x": 2})
    import hashlib
    import json

    assert params_hash(a) == hashlib.sha256(json.dumps(a, sort_keys=True).encode()).hexdigest()[:16]


def test_deep_merge_merges_nested_and_copies():
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}
    over = {"a": {"c": {"d": 3, "f": 4}}, "e": [2], "g": {"h": 5}}
    out = deep_merge(base, over)
    assert out == {"a": {"b": 1, "c": {"d": 3, "f": 4}}, "e": [2], "g": {"h": 5}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}  # inputs untouched
    out["g"]["h"] = 0
    assert over["g"]["h"] == 5  # the result shares nothing with the override
    assert deep_merge({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}


def test_schema_errors_list_each_key_path(params):
    params["train"]["epochs"] = "ten"
    params["model"]["d_model"] = "wide"
    with pytest.raises(ParamsError) as err:
        validate_schema(params)
    lines = str(err.value).splitlines()
    assert lines[0] == "params.yaml is invalid:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["model.d_model", "train.epochs"]
    with pytest.raises(ParamsError, match=r"\(top level\)"):
        validate_schema([])
    wrong = {**params, "train": {k: [] for k in params["train"]}, "model": {k: [] for k in params["model"]}}
    with pytest.raises(ParamsError) as err:  # one error per key, more than 10
        validate_schema(wrong)
    assert len(str(err.value).splitlines()) == 11  # the first 10 errors


def test_from_file_with_overrides_and_root(tmp_path):
    with pytest.raises(ParamsError, match=r"parameter file not found: .*absent\.yaml"):
        Registry.from_file(tmp_path / "absent.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({"train": {"epochs": 3}, "seeds": [9]}))
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({"train": {"epochs": 4}}))
    reg = Registry.from_file(ROOT / "params.yaml", overrides=[one, empty, two])
    assert reg.params["train"]["epochs"] == 4 and reg.seeds == (9,)  # later files win
    assert reg.root == ROOT
    assert reg.metrics(Run("student", "nokd", 9)) == ROOT / "results/students/nokd/seed9/metrics.json"
