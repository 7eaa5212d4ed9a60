import copy

import pytest
import yaml

from mmdistill.registry import ParamsError, Registry, Run
from tests.conftest import ROOT


def test_default_params_are_valid():
    reg = Registry.from_file(ROOT / "params.yaml")
    assert set(reg.teachers) == {"complete", "video", "language", "audio"}
    assert "nokd" in reg.students
    assert len(list(reg.runs())) == len(reg.seeds) * (len(reg.teachers) + len(reg.students))


def test_unknown_key_is_named(params):
    params["train"]["epochz"] = 3
    with pytest.raises(ParamsError, match=r"train.*epochz"):
        Registry(params)


def test_wrong_type_is_named(params):
    params["train"]["epochs"] = "ten"
    with pytest.raises(ParamsError, match=r"train\.epochs"):
        Registry(params)


def test_unknown_method_and_configuration(params):
    bad = copy.deepcopy(params)
    bad["students"]["x"] = {
        "configuration": "language_audio",
        "teacher": "complete",
        "method": "magic",
        "level": "final",
    }
    with pytest.raises(ParamsError, match=r"students\.x\.method"):
        Registry(bad)
    bad = copy.deepcopy(params)
    bad["students"]["x"] = {"configuration": "six", "teacher": "complete", "method": "crd", "level": "final"}
    with pytest.raises(ParamsError, match=r"students\.x\.configuration"):
        Registry(bad)


def test_level_the_method_does_not_support(params):
    params["students"]["x"] = {
        "configuration": "language_audio",
        "teacher": "complete",
        "method": "msd",
        "level": "attention",
    }
    with pytest.raises(ParamsError, match=r"students\.x\.level.*'msd' applies at \['final'\]"):
        Registry(params)


def test_student_naming_a_missing_teacher(params):
    params["students"]["x"] = {
        "configuration": "language_audio",
        "teacher": "nobody",
        "method": "crd",
        "level": "final",
    }
    with pytest.raises(ParamsError, match=r"students\.x\.teacher.*nobody"):
        Registry(params)


def test_teacher_lacking_distilled_transformers(params):
    # configuration language_audio distils V<-A and V<-L, which the video branch does not have
    params["students"]["x"] = {
        "configuration": "language_audio",
        "teacher": "video",
        "method": "edam",
        "level": "attention",
    }
    with pytest.raises(ParamsError, match=r"lacks the transformers"):
        Registry(params)


def test_any_student_modality_with_any_lengths(params):
    # a proxy longer than the student's input is up-sampled (transposed convolution)
    params["data"]["lengths"]["L"] = params["data"]["lengths"]["V"] + 1
    for x in ("V", "A", "L"):
        params["student_modality"] = x
        assert Registry(params).params["student_modality"] == x
    params["student_modality"] = "X"
    with pytest.raises(ParamsError, match=r"student_modality"):
        Registry(params)


def test_heads_must_divide_width(params):
    params["model"]["n_heads"] = 3
    with pytest.raises(ParamsError, match=r"n_heads"):
        Registry(params)


def test_paths_are_built_from_registry_keys(params):
    reg = Registry(params)
    run = Run("student", "nokd", 1)
    assert reg.checkpoint(run).as_posix() == "results/students/nokd/seed1/model.pt"
    assert reg.metrics(run).parent == reg.run_dir(run)
    assert reg.prepared().as_posix() == "data/prepared/synthetic.h5"


def test_run_params_change_only_for_the_changed_student(params):
    reg = Registry(params)
    params2 = copy.deepcopy(params)
    params2["students"]["nokd"]["alpha"] = 0.5
    reg2 = Registry(params2)
    changed = [r.id for r in reg.runs() if reg.run_params(r) != reg2.run_params(r)]
    assert changed and all(c.startswith("students/nokd/") for c in changed)


def test_override_files_deep_merge(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"train": {"epochs": 99}}))
    reg = Registry.from_file(ROOT / "params.yaml", overrides=[extra])
    assert reg.params["train"]["epochs"] == 99
    assert (
        reg.params["train"]["batch_size"] == yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["batch_size"]
    )


def test_no_pipeline_output_is_committed():
    """A committed output (Table 1, figures, profile, robustness, any run) would make a fresh
    clone's `snakemake --cores 4 results/table1.csv` take it as up to date and run nothing."""
    import shutil
    import subprocess

    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    reg = Registry.from_file(ROOT / "params.yaml")
    outputs = [
        reg.profile(),
        reg.table("csv"),
        reg.table("md"),
        reg.figures_dir(),
        reg.robustness("csv"),
        reg.robustness("md"),
        reg.prepared(),
    ]
    outputs += [reg.run_dir(r) for r in reg.runs()]
    tracked = subprocess.run(
        ["git", "ls-files", "--", *map(str, outputs)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == []


def test_paths_make_a_separate_study(params):
    """A study merged over the parameters keeps its data, results and logs in folders of its own."""
    params["paths"] = {"results": "results/ka", "data": "data/ka", "logs": "logs/ka"}
    params["subset"] = {"students": ["nokd", "c5_hinton"]}
    reg = Registry(params)
    assert reg.prepared().as_posix() == "data/ka/prepared/synthetic.h5"
    assert reg.raw_dir().as_posix() == "data/ka/raw/synthetic"
    assert reg.table("md").as_posix() == "results/ka/table1.md" and reg.figures_dir().as_posix() == "results/ka/figures"
    run = next(reg.runs("student"))
    assert reg.checkpoint(run).as_posix().startswith("results/ka/students/")
    assert reg.log(run).as_posix().startswith("logs/ka/") and reg.step_log("report").as_posix() == "logs/ka/report.log"
    assert set(reg.students) == {"nokd", "c5_hinton"} and set(reg.teachers) == {"complete"}


def test_known_answer_config_is_valid_and_separate():
    reg = Registry.from_file(ROOT / "params.yaml", overrides=[ROOT / "workflow" / "configs" / "known-answer.yaml"])
    default = Registry.from_file(ROOT / "params.yaml")
    assert reg.params["data"]["synthetic"]["scenario"] == "known_answer" and len(reg.seeds) == 5
    mine = {p.relative_to(ROOT).as_posix() for p in reg.targets()}
    assert not mine & {p.relative_to(ROOT).as_posix() for p in default.targets()}
    assert all(p.startswith(("results/known-answer/", "data/known-answer/")) for p in mine)


def test_regression_objective_refuses_output_distributions(params):
    params["train"]["objective"] = "regression"
    with pytest.raises(ParamsError, match=r"students\.c2_crd_final: train\.objective 'regression'.*no meaning"):
        Registry(params)
    keep = [k for k, v in params["students"].items() if v["level"] not in ("final",) and v["method"] != "distillvlm"]
    params["subset"] = {"students": keep}
    reg = Registry(params)  # penultimate, post-attention and attention levels keep their meaning
    assert "c5_edam_s_attn" in reg.students and "c5_crd_penult" in reg.students
    from mmdistill.experiment import blueprint
    from mmdistill.modalities import FEATURE_DIM

    assert blueprint(reg, Run("teacher", "complete", 0), FEATURE_DIM)["model"]["n_classes"] == 1


def test_train_fraction_changes_only_its_student(params):
    reg = Registry(copy.deepcopy(params))
    params["students"]["c5_hinton"]["train_fraction"] = 0.5
    reg2 = Registry(params)
    changed = {r.id for r in reg.runs() if reg.run_params(r) != reg2.run_params(r)}
    assert changed == {f"students/c5_hinton/seed{s}" for s in reg.seeds}
    assert reg2.students["c5_hinton"].train_fraction == 0.5 and reg2.students["nokd"].train_fraction == 1.0
