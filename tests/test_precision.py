"""bf16 mixed precision on the CPU: a tiny run end to end, and what stays float32.

Tolerance of the accuracy comparison. Both runs start from the same weights and draw the same
batches and dropout masks; they differ only by bfloat16 rounding (8 significant bits) in the
forward pass. On this set (96 validation samples, one sample = 1.04 points) the fp32 runs of
seeds 3, 4 and 5 reach 0.354, 0.406 and 0.438: a seed-to-seed spread of 8 points, while bf16
and fp32 of the same seed differed by at most 2 samples (2.1 points; measured on a 2-core CPU,
torch 2.13). The test allows 5 points (at most 4 samples' worth of predictions flipped), well
below the spread a change of seed causes and large enough not to fail on a legitimate rounding
difference; a broken bf16 path (wrong casts, no training) lands near chance (1/7) or far off.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mmdistill.distill import crd, edam
from mmdistill.precision import autocast
from mmdistill.train.loop import Objective, evaluate, train
from tests.kd_setup import METHODS, make_kd, make_models
from tests.test_train import CFG, LENGTHS, make_model, make_split

pytestmark = pytest.mark.usefixtures("one_thread")

ACC_TOLERANCE = 0.05  # see the module docstring
CPU = torch.device("cpu")


def fit(tmp_path, precision: str, seed: int = 3, kd=None, model=None, epochs: int = 6):
    model = model or make_model()
    cfg = replace(CFG, epochs=epochs, early_stop=epochs + 1, lr_patience=epochs + 1, precision=precision)
    res = train(
        model,
        make_split("train", 192, 1),
        make_split("valid", 96, 2),
        cfg,
        seed=seed,
        run_label=f"{precision}",
        resume_path=tmp_path / f"{precision}.pt",
        config_hash=precision,
        kd=kd,
        progress=False,
    )
    return model, res


def test_bf16_run_is_finite_and_as_accurate_as_fp32(tmp_path):
    calls = []  # (training, autocast on, logits dtype) of every forward pass of the model

    def watch(model):
        model.register_forward_hook(
            lambda m, args, out: calls.append((m.training, torch.is_autocast_enabled("cpu"), out.logits.dtype))
        )
        return model

    m32, r32 = fit(tmp_path, "fp32")
    m16, r16 = fit(tmp_path, "bf16", model=watch(make_model()))
    for row in r16.history:
        assert all(math.isfinite(v) for v in row.values())
    # the forward passes of training ran in bfloat16, those of validation in float32
    assert {c for c in calls if c[0]} == {(True, True, torch.bfloat16)}
    assert {c for c in calls if not c[0]} == {(False, False, torch.float32)}
    acc32 = evaluate(m32, make_split("valid", 96, 2), 32, CPU)["acc7"]
    acc16 = evaluate(m16, make_split("valid", 96, 2), 32, CPU)["acc7"]
    assert acc32 > 0.3  # the set is learnable: chance is 1/7
    assert abs(acc16 - acc32) <= ACC_TOLERANCE, (acc16, acc32)
    # same trajectory up to rounding: per-epoch training losses within 2 %
    for a, b in zip(r32.history, r16.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
    # the bf16 path really ran in bf16: not bit-identical to fp32
    assert [h["train_loss"] for h in r16.history] != [h["train_loss"] for h in r32.history]


@pytest.mark.parametrize("key", ["crd_attention", "crd_post_attention", "edam_s", "edam_t_temp2"])
def test_bf16_distillation_runs_with_float32_banks_and_log_probabilities(tmp_path, monkeypatch, key):
    """CRD's scores, Z and NCE logs, and EDAM's log-probabilities and cross-entropies are float32
    under bf16 autocast; CRD's banks stay float32 buffers; a 2-epoch bf16 run stays finite."""
    seen: dict[str, set] = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            seen.setdefault(name, set()).update(
                (a.dtype, torch.is_autocast_enabled("cpu"))
                for a in args
                if isinstance(a, torch.Tensor) and a.is_floating_point()
            )
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)

    for module, name in (
        (crd, "contrast_loss"),
        (crd, "bank_scores"),
        (edam, "map_cross_entropy"),
        (edam, "row_cross_entropy"),
        (edam, "log_maps"),
    ):
        spy(module, name)
    split = make_split("train", 192, 1)
    teacher, student = make_models(LENGTHS)
    kd = make_kd(key, student, teacher, split, 16, CPU)
    # one step by hand under autocast: the loss's own output is float32
    obj = Objective(student, kd, split, 16, CPU, teacher_cache_mb=100)
    batch = next(split.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0), n_negatives=8))
    with autocast(CPU, "bf16"):
        total, parts = obj(batch)
    assert total.dtype == parts["kd"].dtype == parts["ce"].dtype == torch.float32
    total.backward()
    assert seen, "no precision-sensitive function was called"
    for name, dtypes in seen.items():
        assert dtypes == {(torch.float32, False)}, (name, dtypes)
    # a short bf16 run end to end
    _, res = fit(tmp_path, "bf16", kd=kd, model=student, epochs=2)
    assert all(math.isfinite(v) for row in res.history for v in row.values())
    for name, buf in kd.loss.named_buffers():
        if name.endswith(("bank_s", "bank_t", ".z")):
            assert buf.dtype == torch.float32, name
            assert torch.isfinite(buf).all(), name


def test_every_loss_returns_float32_under_bf16_autocast():
    split = make_split("train", 48, 1)
    for key in METHODS:
        teacher, student = make_models(LENGTHS)
        kd = make_kd(key, student, teacher, split, 16, CPU)
        obj = Objective(student, kd, split, 16, CPU, teacher_cache_mb=100)
        batch = next(split.batches(16, n_negatives=kd.loss.needs_negatives))
        with autocast(CPU, "bf16"):
            total, parts = obj(batch)
        assert parts["kd"].dtype == torch.float32 and torch.isfinite(parts["kd"]), key
        total.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads), key


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        autocast(CPU, "fp16")
