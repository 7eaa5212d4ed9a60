"""Training loop: determinism, exact resume after an interruption, non-finite loss."""

from __future__ import annotations

import time

import pytest
import torch

from mmdistill.data.dataset import SplitData
from mmdistill.modalities import FEATURE_DIM
from mmdistill.models import ModelConfig, build_student
from mmdistill.train import loop
from mmdistill.train.loop import NonFiniteLossError, TrainConfig, train

LENGTHS = {"V": 8, "A": 8, "L": 4}
CFG = TrainConfig(epochs=3, batch_size=16, lr=3e-3, grad_clip=0.8, lr_patience=1, lr_factor=0.5, early_stop=5)


def make_split(name: str, n: int, seed: int) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, LENGTHS[m], FEATURE_DIM[m], generator=g) for m in LENGTHS}
    score = inputs["V"][:, -1, 0].clamp(-3, 3)
    label = (score.round() + 3).long()
    length = torch.tensor([[LENGTHS["V"], LENGTHS["A"], LENGTHS["L"]]] * n, dtype=torch.int32)
    return SplitData(name, inputs, length, label, score, [f"{name}{i}" for i in range(n)])


def make_model():
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 1})
    return build_student(cfg, "language_audio", "V", LENGTHS, "down")


def fit(tmp_path, tag, cfg=CFG, train_split=None, model=None, resume=None, config_hash="h", progress=False, **kw):
    """Train ``model`` (default: :func:`make_model`) on the test splits; ``resume`` names the
    resume file (default: ``tag``); other keywords go to :func:`train`."""
    model = make_model() if model is None else model
    res = train(
        model,
        train_split or make_split("train", 48, 1),
        make_split("valid", 16, 2),
        cfg,
        seed=3,
        run_label=f"test/{tag}",
        resume_path=tmp_path / f"{resume or tag}.pt",
        config_hash=config_hash,
        progress=progress,
        **kw,
    )
    return model, res


def history_without_time(res):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in res.history]


def test_same_seed_gives_identical_results(tmp_path):
    m1, r1 = fit(tmp_path, "a")
    m2, r2 = fit(tmp_path, "b")
    assert history_without_time(r1) == history_without_time(r2)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    ref_model, ref = fit(tmp_path, "ref")

    real_save = loop.save_resume
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill after epoch 2")

    monkeypatch.setattr(loop, "save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, "resumed")
    monkeypatch.setattr(loop, "save_resume", real_save)
    model, res = fit(tmp_path, "resumed")
    assert res.resumed_from_epoch == 2
    assert history_without_time(res) == history_without_time(ref)
    for v1, v2 in zip(ref_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(v1, v2)


def test_resume_file_from_other_settings_is_not_used(tmp_path):
    fit(tmp_path, "x", cfg=TrainConfig(**{**CFG.__dict__, "epochs": 1}))
    _, res = fit(tmp_path, "t", resume="x", config_hash="other")
    assert res.resumed_from_epoch == 0 and res.epochs_run == 3


def test_non_finite_loss_names_run_epoch_and_step(tmp_path):
    bad = make_split("train", 48, 1)
    bad.inputs["V"][20, -1, :] = float("nan")  # the sample lands in some batch of epoch 1
    with pytest.raises(NonFiniteLossError, match=r"test/nan: training loss is non-finite at epoch 1, step \d+/3"):
        fit(tmp_path, "nan", train_split=bad)


@pytest.mark.parametrize("level", ["attention", "post_attention"])
def test_teacher_internals_cached_when_they_fit_and_equal_to_the_per_step_pass(level):
    from dataclasses import replace

    from mmdistill.distill.base import DistillContext, build_loss
    from mmdistill.models import build_teacher
    from mmdistill.models.configurations import CONFIGURATIONS

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 1})  # as make_model's student
    teacher = build_teacher(cfg, ("V", "A", "L")).eval().requires_grad_(False)
    student = make_model()
    split = make_split("train", 40, 4)
    example = next(split.batches(16))

    def probe(s_req, t_req):
        with torch.no_grad():
            return student(example.inputs, s_req), teacher(example.inputs, t_req)

    ctx = DistillContext(
        level=level, pairs=CONFIGURATIONS["language_audio"].distilled_pairs, n_data=len(split), probe=probe
    )
    loss = build_loss("crd", ctx, {"nce_k": 8, "feat_dim": 4, "row_bins": 2}).eval()
    kd = loop.Distillation(teacher=teacher, loss=loss, alpha=1.0, beta=1.0)
    cached = loop.Objective(student, kd, split, 16, torch.device("cpu"), teacher_cache_mb=100)
    live = loop.Objective(student, kd, split, 16, torch.device("cpu"), teacher_cache_mb=0)
    assert cached.cache.has_internals and not live.cache.has_internals
    calls = []
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    batch = next(split.batches(16, shuffle=True, generator=torch.Generator().manual_seed(5), n_negatives=8))
    with torch.no_grad():
        t_live = live.cache(batch, teacher(batch.inputs, replace(loss.teacher_request(), internals_only=True)))
        n_live = len(calls)
        t_cached = cached.cache(batch)
    hook.remove()
    assert n_live == 1 and len(calls) == 1  # the cached path runs no teacher pass
    store = "attention" if level == "attention" else "post_attention"
    for key, layers in getattr(t_live, store).items():
        assert len(layers) == 1
        for a, b in zip(layers, getattr(t_cached, store)[key]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the whole objective gives the same loss either way (student without dropout)
    student.eval()
    torch.testing.assert_close(cached(batch)[0], live(batch)[0], atol=1e-5, rtol=1e-5)


def test_best_epoch_validation_metrics_are_those_of_the_returned_weights(tmp_path):
    from mmdistill.train.loop import evaluate

    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 4, "lr": 0.03})  # the best epoch is not the last
    model, res = fit(tmp_path, "best", cfg=cfg)
    assert res.best_epoch < res.epochs_run
    again = evaluate(model, make_split("valid", 16, 2), CFG.batch_size, torch.device("cpu"))
    assert res.best_valid == again  # kept from the best epoch instead of evaluated twice
    assert res.best_valid["loss"] == res.best_valid_loss


def test_foreach_adam_gives_the_weights_of_the_per_parameter_loop(tmp_path, monkeypatch):
    m1, r1 = fit(tmp_path, "foreach")
    per_parameter = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr, foreach: per_parameter(params, lr=lr, foreach=False))
    m2, r2 = fit(tmp_path, "loop")
    assert history_without_time(r1) == history_without_time(r2)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_phases_are_timed_and_cover_the_epochs(tmp_path):
    from mmdistill.train.timing import JobTimer

    timer = JobTimer()
    t0 = time.perf_counter()
    _, res = fit(tmp_path, "t", timer=timer)
    wall = time.perf_counter() - t0
    s = timer.seconds
    assert s["steps"] > 0 and s["validation"] > 0 and s["checkpoint"] > 0 and s["batches"] > 0
    assert all(v >= 0 for v in s.values()), s
    assert sum(s.values()) <= wall  # every phase lies within the call
    # the epochs' seconds (steps, batches, validation, progress bar) are all inside the phases
    per_epoch = sum(row["seconds"] for row in res.history)
    assert per_epoch <= sum(s.values()) and s["steps"] + s["validation"] + s["batches"] <= per_epoch


def test_process_start_is_read_from_the_system():
    from mmdistill.train.timing import process_started_at

    started = process_started_at()
    assert started is not None and 0 < time.time() - started < 24 * 3600


def test_curves_file_is_the_text_pandas_writes(tmp_path):
    import pandas as pd

    from mmdistill.experiment import write_curves

    history = [
        {"epoch": 1, "train_loss": 1.0 / 3, "valid_loss": 2.5, "lr": 1e-3, "seconds": 0.1, "kd_w": float("nan")},
        {"epoch": 2, "train_loss": 0.25, "valid_loss": 1e-7, "lr": 1e-4, "seconds": 12.0, "kd_w": 0.5},
    ]
    write_curves(tmp_path / "c.csv", history)
    assert (tmp_path / "c.csv").read_text() == pd.DataFrame(history).to_csv(index=False)


def test_resume_from_a_checkpoint_without_best_validation_metrics(tmp_path, monkeypatch):
    ref_model, ref = fit(tmp_path, "ref")
    real_save = loop.save_resume

    def save_old_format_then_die(path, config_hash, model, optimizer, scheduler, kd, gen, state, device):
        legacy = {k: v for k, v in state.items() if k != "best_valid"}  # as an older version wrote it
        real_save(path, config_hash, model, optimizer, scheduler, kd, gen, legacy, device)
        raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(loop, "save_resume", save_old_format_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, "legacy")
    monkeypatch.setattr(loop, "save_resume", real_save)
    model, res = fit(tmp_path, "legacy")
    assert res.resumed_from_epoch == 1 and history_without_time(res) == history_without_time(ref)
    # the best epoch (3 here) came after the resume, so its validation metrics are kept again
    assert res.best_epoch > 1 and res.best_valid == ref.best_valid
    for v1, v2 in zip(ref_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(v1, v2)


def test_regression_objective_is_l1_on_the_score_and_classes_by_rounding(tmp_path):
    """train.objective: regression: one output, L1 on the continuous label, the class is
    round(clip(prediction, -3, 3)) + 3; the validation loss that picks the best epoch is the L1."""
    from mmdistill.data.dataset import Batch

    logits = torch.tensor([[-3.7], [-0.5], [0.5], [1.49], [2.51], [9.0]])
    assert loop.to_classes(logits).tolist() == [0, 3, 3, 4, 6, 6]  # half to even, like prepare
    assert loop.to_classes(torch.eye(7)[[2, 5]]).tolist() == [2, 5]  # 7 outputs: argmax
    b = Batch({}, torch.tensor([0, 6]), torch.tensor([-3.0, 2.5]), torch.arange(2))
    assert loop.task_loss(torch.tensor([[-2.0], [2.0]]), b).item() == pytest.approx(0.75)
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 1, "n_classes": 1})
    model, res = fit(tmp_path, "reg", model=build_student(cfg, "language_audio", "V", LENGTHS, "down"))
    valid = make_split("valid", 16, 2)
    with torch.no_grad():
        pred = model(valid.inputs).logits
    l1 = (pred.squeeze(-1) - valid.score).abs().mean().item()
    assert res.best_valid_loss == pytest.approx(l1, rel=1e-5)
    m = loop.evaluate(model, valid, 16, torch.device("cpu"))
    want = (torch.round(pred.squeeze(-1).clamp(-3, 3)) + 3).long()
    assert m["acc7"] == pytest.approx((want == valid.label).float().mean().item())


def test_student_fraction_subset_is_nested_fixed_and_renumbered():
    split = make_split("train", 40, 1)
    half, quarter = split.subset(0.5), split.subset(0.25)
    assert (len(half), len(quarter)) == (20, 10)
    assert set(quarter.segment_id) <= set(half.segment_id)
    assert split.subset(0.5).segment_id == half.segment_id  # the same samples for every run
    assert split.subset(1.0) is split
    i = split.segment_id.index(half.segment_id[3])
    assert torch.equal(half.inputs["V"][3], split.inputs["V"][i]) and half.label[3] == split.label[i]
    batch = next(half.batches(32))
    assert batch.index.tolist() == list(range(20))  # positions renumbered 0..n-1
    with pytest.raises(ValueError, match="fraction"):
        split.subset(0.0)


def test_train_run_trains_a_student_on_its_share(tmp_path):
    """train_fraction through the experiment glue: the student's metrics record the smaller
    training set; its teacher trained on all of it."""
    import yaml

    from mmdistill.data.acquire import acquire, prepare_dataset
    from mmdistill.experiment import train_run
    from mmdistill.registry import Registry, Run
    from tests.conftest import tiny_params

    params = tiny_params()
    params["seeds"] = [0]
    params["train"]["epochs"] = 1
    params["students"]["c5_hinton_half"] = {**params["students"]["c5_hinton"], "train_fraction": 0.5}
    params["subset"] = {"students": ["c5_hinton_half"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    reg = Registry.from_file(tmp_path / "params.yaml")
    acquire(reg.params["data"], reg.raw_dir(), progress=False)
    prepare_dataset(reg.params["data"], reg.raw_input(), reg.prepared(), reg.data_summary())
    n = params["data"]["synthetic"]["n_train"]
    teacher = train_run(reg, Run("teacher", "complete", 0), progress=False)
    student = train_run(reg, Run("student", "c5_hinton_half", 0), progress=False)
    assert teacher["n_train"] == n and student["n_train"] == n // 2
    assert student["params"]["student"]["train_fraction"] == 0.5
