"""What one training step computes: eq. 1 from the teacher's cached outputs, the epoch's mean
loss, the batches' shuffling, the evaluation's loss, and a non-finite loss stopping before it
reaches the weights. Each quantity is recomputed here from its definition."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mmdistill.data.dataset import mask_inputs
from mmdistill.models.outputs import NOTHING, ModelOutput
from mmdistill.train.loop import NonFiniteLossError, Objective, TrainConfig, evaluate
from tests.kd_setup import NO_DROPOUT, make_kd, make_models
from tests.test_train import CFG, LENGTHS, fit, make_model, make_split

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def msd_setup(alpha=0.7, beta=1.3):
    """A student, its teacher (left trainable, to see the objective freeze it), instance-weighted
    MSD (which reads the teacher's masked-modality views) and the training split."""
    teacher, student = make_models(LENGTHS, **NO_DROPOUT)
    teacher.train().requires_grad_(True)
    split = make_split("train", 40, 4)
    kd = replace(make_kd("msd_instance", student, teacher, split, 16, CPU), alpha=alpha, beta=beta)
    return teacher, student, kd, split


def test_objective_is_eq1_on_the_teachers_own_outputs():
    teacher, student, kd, split = msd_setup()
    obj = Objective(student, kd, split, 16, CPU)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    batch = next(split.batches(16, shuffle=True, generator=torch.Generator().manual_seed(1)))
    total, parts = obj(batch)
    with torch.no_grad():  # the teacher's outputs, computed directly, views included
        direct = teacher(batch.inputs, NOTHING)
        views = {n: teacher(mask_inputs(batch.inputs, keep), NOTHING) for n, keep in kd.loss.teacher_views().items()}
    cached = obj.cache(batch)
    for got, want in [(cached, direct)] + [(cached.views[n], views[n]) for n in views]:
        torch.testing.assert_close(got.logits, want.logits)
        torch.testing.assert_close(got.penultimate, want.penultimate)
    assert set(cached.views) == set(views)
    out = student(batch.inputs, kd.loss.student_request())
    ce = F.cross_entropy(out.logits, batch.label)
    t_out = ModelOutput(direct.logits, direct.penultimate, views=views)
    kd_value = kd.loss(out, t_out, batch)
    assert set(parts) == {"ce", "kd"}
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["kd"], kd_value)
    torch.testing.assert_close(total, 0.7 * ce + 1.3 * kd_value)


def test_a_distilled_run_trains_on_eq1(tmp_path):
    _, student, kd, split = msd_setup(alpha=0.5, beta=2.0)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 1})
    _, res = fit(tmp_path, "kd", cfg, train_split=split, model=student, kd=kd)
    h = res.history[0]
    assert h["train_kd"] > 0 and any(k.startswith("kd_") for k in h)
    assert h["train_loss"] == pytest.approx(0.5 * h["train_ce"] + 2.0 * h["train_kd"], rel=1e-5)


def record_steps(monkeypatch) -> list[tuple[float, int, torch.Tensor]]:
    """(loss, batch size, sample indices) of every training step, in order."""
    steps = []
    real = Objective.__call__

    def recording(self, batch):
        loss, parts = real(self, batch)
        steps.append((loss.item(), len(batch), batch.index.clone()))
        return loss, parts

    monkeypatch.setattr(Objective, "__call__", recording)
    return steps


def test_epoch_loss_is_the_sample_weighted_mean_and_batches_are_shuffled_each_epoch(tmp_path, monkeypatch):
    steps = record_steps(monkeypatch)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    _, res = fit(tmp_path, "mean", cfg)  # 48 training samples, batches of 16
    assert len(steps) == 6
    for epoch, h in enumerate(res.history):
        mine = steps[3 * epoch : 3 * epoch + 3]
        assert h["train_loss"] == pytest.approx(sum(loss * n for loss, n, _ in mine) / 48, rel=1e-6)
    orders = [torch.cat([idx for *_, idx in steps[3 * e : 3 * e + 3]]) for e in range(2)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(48))  # every sample once per epoch
    assert orders[0].tolist() != list(range(48)) and orders[0].tolist() != orders[1].tolist()


def test_evaluation_loss_and_accuracy_from_their_definitions():
    model = make_model().eval()
    split = make_split("valid", 40, 2)
    got = evaluate(model, split, 16, CPU)
    with torch.no_grad():
        logits = model(split.inputs, NOTHING).logits
    assert got["loss"] == pytest.approx(F.cross_entropy(logits, split.label).item(), rel=1e-5)
    assert got["acc7"] == pytest.approx((logits.argmax(-1) == split.label).float().mean().item())


@pytest.mark.parametrize("where", ["every sample of epoch 2", "one sample of epoch 1"])
def test_a_non_finite_loss_stops_before_the_weights_are_updated(tmp_path, where):
    bad = make_split("train", 48, 1)
    model = make_model()
    if where == "every sample of epoch 2":
        fit(tmp_path, "nan", TrainConfig(**{**CFG.__dict__, "epochs": 1}), model=model)
        bad.inputs["V"][:, -1, :] = float("inf")
        cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    else:
        bad.inputs["V"][20, -1, :] = float("nan")
        cfg = CFG
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"step (\d+)/3") as err:
        fit(tmp_path, "nan", cfg, train_split=bad, model=model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if where == "every sample of epoch 2":  # the first step of the epoch: no update at all
        assert "step 1/3" in str(err.value)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k


def test_resume_is_logged_with_run_epoch_and_file(tmp_path, caplog):
    fit(tmp_path, "r", TrainConfig(**{**CFG.__dict__, "epochs": 1}))
    caplog.set_level(logging.INFO, logger="mmdistill.train.loop")
    fit(tmp_path, "r", TrainConfig(**{**CFG.__dict__, "epochs": 2}))
    assert f"test/r: resuming after epoch 1 from {tmp_path / 'r.pt'}" in caplog.text
