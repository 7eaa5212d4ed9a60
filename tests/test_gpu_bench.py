"""The GPU benchmark's code path on the CPU, its target figures and the GPU-hours projection."""

from __future__ import annotations

import math

import pytest

from mmdistill.gpu_bench import GPU_CASES, MOSEI_SPLITS, gpu_bench, targets
from mmdistill.gpu_cost import project, to_text, train_rate
from mmdistill.registry import Registry, Run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = {"d_model": 8, "n_heads": 2, "n_layers": 1}
TINY_LENGTHS = {"V": 6, "A": 6, "L": 4}


def test_every_section_runs_on_the_cpu():
    r = gpu_bench(
        TINY_MODEL,
        TINY_LENGTHS,
        4,
        device_name="cpu",
        steps=1,
        warmup=1,
        compile_modes=("none",),
        matmul_n=64,
        log=lambda *_: None,
    )
    assert not r["errors"] and not r["skipped"]
    for case in GPU_CASES:
        for prec in ("fp32", "bf16"):
            c = r["cases"][case][prec]
            assert c["step_s"] > 0 and c["samples_per_s"] == pytest.approx(4 / c["step_s"])
            assert c["flops_per_step"] > 0 and c["share_of_bf16_matmul"] > 0
            assert c["peak_mem_mb"] is None  # not measured on a CPU
        assert r["cases"][case]["fp32"]["eval_samples_per_s"] > 0
    for case in ("teacher", "student_nokd"):
        launch = r["launch"][case]
        assert set(launch["step_s_by_batch"]) == {"1", "2", "4", "8"}
        assert launch["kernels_per_step"] is None  # the profiler's kernel count needs CUDA
    assert set(r["compile"]) == {"teacher", "student_nokd"}
    assert set(r["targets"]["met"].values()) == {None}  # no verdicts on a CPU
    assert "bf16_compiled" not in r["targets"]["teacher_epoch_s"]  # mode 'none' is eager, not compiled
    assert r["targets"]["teacher_epoch_s"]["fp32"] == pytest.approx(
        MOSEI_SPLITS["train"] / r["cases"]["teacher"]["fp32"]["samples_per_s"]
    )


def test_time_budget_skips_later_sections():
    r = gpu_bench(
        TINY_MODEL,
        TINY_LENGTHS,
        4,
        device_name="cpu",
        steps=1,
        warmup=1,
        budget_s=0.0,
        matmul_n=64,
        log=lambda *_: None,
    )
    assert (
        r["cases"] == {} and "step teacher fp32" in r["skipped"] and "compile teacher reduce-overhead" in r["skipped"]
    )


def fake_bench(step_s: dict[str, dict[str, float]], batch: int = 24, compiled: dict | None = None) -> dict:
    cases = {
        case: {p: {"step_s": s, "samples_per_s": batch / s, "eval_samples_per_s": 3 * batch / s} for p, s in ps.items()}
        for case, ps in step_s.items()
    }
    r = {"device": "cuda", "device_name": "fake", "setting": {"batch_size": batch}, "cases": cases}
    r["compile"] = compiled or {}
    return r


STEPS = {
    "teacher": {"fp32": 0.120, "bf16": 0.060},
    "student_nokd": {"fp32": 0.040, "bf16": 0.030},
    "student_attention_kd": {"fp32": 0.100, "bf16": 0.050},
}


def test_targets_are_computed_from_the_step_times():
    t = targets(fake_bench(STEPS))
    assert t["teacher_epoch_s"]["bf16"] == pytest.approx(16326 / (24 / 0.060))  # 40.8 s
    assert t["attention_kd_over_nokd"]["bf16"] == pytest.approx(0.050 / 0.030)
    assert t["bf16_over_fp32_speedup"]["teacher"] == pytest.approx(2.0)
    assert t["bf16_over_fp32_speedup"]["student_nokd"] == pytest.approx(0.040 / 0.030)
    # teacher epoch 40.8 s <= 60: met; attention KD 1.67x > 1.5: not met; bf16 1.33x < 1.5: not met
    assert t["met"] == {"teacher_epoch_s": True, "attention_kd_over_nokd": False, "bf16_over_fp32_speedup": False}
    comp = {"teacher": {"reduce-overhead": {"precision": "bf16", "step_s": 0.030, "fell_back_to_eager": False}}}
    t = targets(fake_bench(STEPS, compiled=comp))
    # the projection uses a compiled rate only when train.compile names that mode
    assert train_rate(fake_bench(STEPS, compiled=comp), "teacher", "bf16", "none")[0] == pytest.approx(24 / 0.060)
    assert train_rate(fake_bench(STEPS, compiled=comp), "teacher", "bf16", "reduce-overhead")[0] == pytest.approx(
        24 / 0.030
    )
    assert t["teacher_epoch_s"]["bf16_compiled"] == pytest.approx(16326 / (24 / 0.030))


def paper_registry() -> Registry:
    from tests.conftest import ROOT

    return Registry.from_file(ROOT / "params.yaml", overrides=[ROOT / "params-paper.yaml"])


def test_projection_sums_every_run_of_the_study():
    reg = paper_registry()
    p = project(fake_bench(STEPS), reg)
    runs = list(reg.runs())
    assert p["runs"] == len(runs) == (len(reg.teachers) + len(reg.students)) * len(reg.seeds)
    # one teacher run by hand: 40 epochs of (train at bf16 + valid at fp32 eval rate) + test
    t_train, t_eval = 24 / 0.060, 3 * 24 / 0.120
    teacher = 40 * (16326 / t_train + 1871 / t_eval) + 4659 / t_eval
    assert p["rows"]["teachers/complete"]["hours"] == pytest.approx(len(reg.seeds) * teacher / 3600)
    # an attention-level KD row costs more than the no-KD row; its set-up is one teacher pass
    nokd = p["rows"]["students/nokd"]["hours"]
    edam = p["rows"]["students/c5_edam_s_attn"]
    assert edam["class"] == "student_attention_kd" and edam["hours"] > nokd
    s_eval = 3 * 24 / 0.040
    one = 40 * (16326 / (24 / 0.050) + 1871 / s_eval) + 4659 / s_eval + 16326 / t_eval
    assert edam["hours"] == pytest.approx(len(reg.seeds) * one / 3600)
    assert p["gpu_hours"] == pytest.approx(sum(r["hours"] for r in p["rows"].values()))
    assert "Projected GPU-hours" in to_text(p)
    assert p["warnings"] == [  # the fake benchmark names its batch (24, as the parameters) only
        f"measured with {k} None, the parameters ask for {v}"
        for k, v in (("model", reg.params["model"]), ("lengths", dict(reg.params["data"]["lengths"])))
    ]
    bench = fake_bench(STEPS)
    bench["setting"].update(model=reg.params["model"], lengths=dict(reg.params["data"]["lengths"]))
    assert project(bench, reg)["warnings"] == []
    bench["device"] = "cpu"
    assert project(bench, reg)["warnings"] == ["measured on cpu, not on a GPU"]


def test_projection_needs_the_cases_of_the_configured_precision():
    reg = paper_registry()
    steps = {case: {"fp32": ps["fp32"]} for case, ps in STEPS.items()}
    with pytest.raises(ValueError, match="lacks the cases"):
        project(fake_bench(steps), reg)
    assert reg.params["train"]["precision"] == "bf16"
    assert math.isfinite(project(fake_bench(STEPS), reg)["gpu_hours"])
    assert Run("teacher", "complete", 0) in set(reg.runs())
