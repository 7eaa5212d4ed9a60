"""Missing-modality robustness: feature means over real steps, masked evaluation on
constructed models, and the CLI step on a tiny project (table rows, student pick)."""

import math

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from mmdistill.cli import main
from mmdistill.data.dataset import SplitData
from mmdistill.experiment import blueprint, build_from_blueprint, load_data, save_model
from mmdistill.io import write_json
from mmdistill.modalities import FEATURE_DIM
from mmdistill.models.outputs import ModelOutput
from mmdistill.registry import Registry, Run
from mmdistill.report.robustness import evaluate_missing, feature_means, missing_conditions, pick_students, teacher_rows
from mmdistill.train.loop import evaluate

LENGTHS = {"V": 4, "A": 4, "L": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_split(n=12, seed=0) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, LENGTHS[m], FEATURE_DIM[m], generator=g) for m in LENGTHS}
    label = torch.randint(0, 7, (n,), generator=g)
    length = torch.tensor([[LENGTHS[m] for m in "VAL"]] * n, dtype=torch.int32)
    return SplitData("test", inputs, length, label, label.float() - 3, [str(i) for i in range(n)])


class AudioReader(nn.Module):
    """Predicts class 6 when the audio features sum to > 0, else 0; records its inputs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, inputs, request=None):
        self.seen.append({m: x.clone() for m, x in inputs.items()})
        s = inputs["A"].sum(dim=(1, 2))  # (B,)
        logits = torch.zeros(len(s), 7)
        logits[:, 6], logits[:, 0] = s, -s
        return ModelOutput(logits, torch.zeros(len(s), 1))


def test_feature_means_use_real_steps_only():
    split = make_split(n=3)
    split.length[:, 1] = torch.tensor([4, 1, 0], dtype=torch.int32)  # audio: full, last step, empty
    split.length[:, 2] = torch.tensor([2, 2, 1], dtype=torch.int32)
    split.inputs["A"][1, :3] = 1e6  # padding of sample 1: must not count
    means = feature_means(split, chunk=2)
    a = split.inputs["A"]
    want = (a[0].sum(0) + a[1, 3]) / 5
    assert torch.allclose(means["A"], want, atol=1e-4)
    lang = split.inputs["L"]
    assert torch.allclose(means["L"], (lang[0].sum(0) + lang[1].sum(0) + lang[2, 1]) / 5, atol=1e-5)
    assert means["V"].shape == (FEATURE_DIM["V"],)
    split.length[:, 1] = 0
    with pytest.raises(ValueError, match="modality A has no real"):
        feature_means(split)


def test_missing_conditions_are_relative_to_the_student():
    assert missing_conditions("V") == [("A",), ("L",), ("A", "L")]
    assert missing_conditions("A") == [("V",), ("L",), ("V", "L")]
    with pytest.raises(ValueError):
        missing_conditions("X")


def test_masking_changes_what_the_model_sees_and_predicts():
    split = make_split(n=40)
    model = AudioReader()
    full = evaluate_missing(model, split, (), "zero", None, batch_size=16)
    no_lang = evaluate_missing(model, split, ("L",), "zero", None, batch_size=16)
    assert no_lang["acc7"] == full["acc7"]  # the model ignores language
    assert (model.seen[-1]["L"] == 0).all() and (model.seen[-1]["V"] != 0).any()
    zero_audio = evaluate_missing(model, split, ("A",), "zero", None, batch_size=16)
    assert zero_audio["confusion"] != full["confusion"]  # every prediction is now class 0
    assert sum(row[0] for row in zero_audio["confusion"]) == len(split)
    means = {m: torch.full((FEATURE_DIM[m],), 0.5) for m in "VAL"}
    mean_audio = evaluate_missing(model, split, ("A", "L"), "mean", means, batch_size=16)
    assert torch.equal(model.seen[-1]["A"], torch.full_like(model.seen[-1]["A"], 0.5))
    assert torch.equal(model.seen[-1]["L"], torch.full_like(model.seen[-1]["L"], 0.5))
    assert sum(row[6] for row in mean_audio["confusion"]) == len(split)  # positive sum: class 6


def test_real_teacher_rows_change_under_masking():
    from mmdistill.models import ModelConfig, build_teacher

    torch.manual_seed(0)
    teacher = build_teacher(ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 1}), ("V", "A", "L"))
    split = make_split(n=24)
    rows = teacher_rows("complete", 0, teacher, split, feature_means(split), "V", batch_size=8)
    assert [(r["missing"], r["fill"]) for r in rows] == [
        ("none", "zero"),
        ("A", "zero"),
        ("A", "mean"),
        ("L", "zero"),
        ("L", "mean"),
        ("A+L", "zero"),
        ("A+L", "mean"),
    ]
    with torch.no_grad():
        teacher.eval()
        full = teacher(split.inputs).logits
        masked = teacher({**split.inputs, "A": torch.zeros_like(split.inputs["A"])}).logits
    assert not torch.allclose(full, masked)  # removing audio changes the teacher's outputs
    assert math.isclose(rows[0]["acc"], 100 * evaluate(teacher, split, 8, torch.device("cpu"))["acc7"])


@pytest.fixture
def tiny_project(tmp_path, params):
    """A prepared tiny data set, untrained teacher checkpoints and made-up student metrics."""
    params["seeds"] = [0, 1]
    params["teachers"] = {k: params["teachers"][k] for k in ("complete", "video")}
    params["students"] = {k: params["students"][k] for k in ("nokd", "c5_hinton", "c2_crd_final")}
    params["data"]["synthetic"].update(n_train=24, n_valid=8, n_test=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--params", str(tmp_path / "params.yaml"), "--quiet"]
    assert main(["download", *args]) == 0 and main(["prepare", *args]) == 0
    reg = Registry.from_file(tmp_path / "params.yaml")
    for run in reg.runs("teacher"):
        torch.manual_seed(run.seed)
        bp = blueprint(reg, run)
        save_model(reg.checkpoint(run), build_from_blueprint(bp), bp)
    valid_acc = {"nokd": 0.3, "c5_hinton": 0.5, "c2_crd_final": 0.4}  # c5_hinton is the best on validation
    for run in reg.runs("student"):
        write_json(
            reg.metrics(run),
            {
                "valid": {"acc7": valid_acc[run.name] + 0.01 * run.seed},
                "test": {"acc7": 0.25 + 0.1 * run.seed, "f1_weighted": 0.2},
            },
        )
    return reg, args


def test_cli_writes_the_table_with_teacher_and_student_rows(tiny_project):
    reg, args = tiny_project
    assert pick_students(reg) == ["nokd", "c5_hinton"]
    assert main(["robustness", *args]) == 0
    table = pd.read_csv(reg.robustness("csv"))
    n_conditions = 7  # all present, then A, L and A+L missing, each zeroed or mean-filled
    assert len(table) == (len(reg.teachers) + 2) * n_conditions
    assert set(table.name) == {"complete", "video", "nokd", "c5_hinton"}
    assert (table.n_seeds == 2).all()
    students = table[table.network == "Student"]
    assert students.acc_mean.round(6).eq(30.0).all()  # seeds 25 % and 35 %: the same in every condition
    assert math.isclose(students.acc_std.iloc[0], math.sqrt(50), abs_tol=1e-4)  # CSV keeps 4 decimals
    teachers = table[table.network == "Teacher"]
    assert teachers.acc_mean.between(0, 100).all() and set(teachers.fill) == {"zero", "mean"}
    # the complete-input rows equal the teachers' plain test accuracy
    test = load_data(reg)["test"]
    from mmdistill.experiment import load_model

    for name in reg.teachers:
        accs = [
            100 * evaluate(load_model(reg.checkpoint(Run("teacher", name, s))), test, 8, torch.device("cpu"))["acc7"]
            for s in reg.seeds
        ]
        row = teachers[(teachers.name == name) & (teachers.missing == "none")]
        assert math.isclose(float(row.acc_mean.iloc[0]), sum(accs) / 2, abs_tol=1e-3)
    md = reg.robustness("md").read_text()
    assert "A+L missing (train mean)" in md and md.count("| Teacher 'complete'") == 2  # accuracy and F1 tables
    assert "Student 'c5_hinton', best distilled" in md
