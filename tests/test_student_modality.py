"""Students whose single input is audio: the whole pipeline on a tiny project."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mmdistill.registry import Registry, Run
from tests.conftest import make_project, run, tiny_params
from tests.test_pipeline import check_table


@pytest.mark.e2e
def test_audio_student_end_to_end(tmp_path):
    """One teacher, the student without KD and one attention-level KD student (DistillVLM, whose
    distilled pairs need the audio student's proxies to match the teacher's shapes), one seed;
    the default target builds Table 1 and the robustness table."""
    params = tiny_params()
    params["seeds"] = [0]
    params["student_modality"] = "A"
    params["teachers"] = {"complete": params["teachers"]["complete"]}
    params["students"] = {k: params["students"][k] for k in ("nokd", "c5_distillvlm")}
    project = make_project(tmp_path / "proj", params)
    run(["snakemake", "--cores", "2"], project)
    check_table(project, params)

    reg = Registry(params, root=project)
    for name in params["students"]:
        ckpt = torch.load(reg.checkpoint(Run("student", name, 0)), weights_only=False)
        assert ckpt["blueprint"]["input_modality"] == "A"
        assert "convs.A.weight" in ckpt["state_dict"]  # the own stream reads audio features (74 wide)
        assert ckpt["state_dict"]["convs.A.weight"].shape[1] == 74
    curves = pd.read_csv(reg.curves(Run("student", "c5_distillvlm", 0)))
    assert {"kd_attn", "kd_hidden", "kd_logit"} <= set(curves.columns)

    rob = pd.read_csv(reg.robustness("csv"))
    assert set(rob.missing) == {"none", "V", "L", "V+L"}  # what an audio student does without
    assert set(rob[rob.network == "Student"].name) == {"nokd", "c5_distillvlm"}
    assert "reads A only" in reg.robustness("md").read_text()
