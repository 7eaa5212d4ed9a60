"""The CUDA paths: same numbers as the CPU, a training run that stays on the device, bf16.

Every test is parametrized over devices: the ``cpu`` variant runs everywhere (it checks the
test's own plumbing: models, losses and splits moved to a device, the comparison, the
transfer counter), the ``cuda`` variant carries the ``cuda`` marker and is skipped, with the
reason, where no CUDA device exists. ``pytest -m cuda`` runs only the CUDA variants
(``tests/gpu/check.sh`` does).

Tolerances (float32 on both sides; TF32 is switched off for the comparisons, since cuDNN
convolutions use it by default on Ampere and later GPUs). CPU and GPU kernels sum in different
orders, so results differ by float32 rounding accumulated through the layers: the largest
absolute difference must stay below 1e-4 of the largest magnitude of the CPU result for
outputs and losses, and 1e-3 of it for gradients (which pass through every layer twice).
A wrong kernel or a missing term gives differences of order 1 on that scale.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mmdistill.models.outputs import NOTHING, Request
from mmdistill.train import loop
from mmdistill.train.loop import Objective, train
from tests.kd_setup import METHODS, NO_DROPOUT, make_kd, make_models
from tests.test_train import CFG, LENGTHS, make_split

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")]
    ),
]
OUT_RTOL, GRAD_RTOL = 1e-4, 1e-3  # relative to the largest magnitude of the CPU result


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 in matmuls and convolutions while a test runs."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def assert_close_scaled(got: torch.Tensor, ref: torch.Tensor, rtol: float, what: str) -> None:
    got, ref = got.detach().cpu().double(), ref.detach().cpu().double()
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= rtol * scale + 1e-12, f"{what}: max |difference| {err:.3g} > {rtol} x max |value| {scale:.3g}"


def output_tensors(out) -> dict[str, torch.Tensor]:
    flat = {"logits": out.logits, "penultimate": out.penultimate}
    for field in ("attention", "maps", "post_attention"):
        for name, layers in getattr(out, field).items():
            for i, t in enumerate(layers):
                flat[f"{field}[{name}][{i}]"] = t
    return flat


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_and_student_match_the_cpu(device):
    """Outputs (with every internal) and parameter gradients of both models, fp32."""
    batch = next(make_split("train", 16, 1).batches(16))
    teacher, student = make_models(LENGTHS, **NO_DROPOUT)
    teacher.requires_grad_(True)
    for model in (teacher, student):
        model.train()  # dropout is 0: deterministic, and the training-mode code path
        names = sorted(model.transformer_names) if hasattr(model, "transformer_names") else []
        req = Request(attention=frozenset(names[:2]), maps=frozenset(names[:2]), post_attention=frozenset(names[:2]))
        results = {}
        for dev in ("cpu", device):
            m = copy.deepcopy(model).to(dev)
            for request in (NOTHING, req):  # the fused attention kernel, then the explicit one
                out = m(batch.to(dev).inputs, request)
                sum(t.float().square().mean() for t in output_tensors(out).values()).backward()
                results[(dev, request)] = (
                    output_tensors(out),
                    {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None},
                )
                m.zero_grad(set_to_none=True)
        for request in (NOTHING, req):
            (ref_out, ref_grad), (out, grad) = results[("cpu", request)], results[(device, request)]
            assert set(out) == set(ref_out) and set(grad) == set(ref_grad) and ref_grad
            for k in ref_out:
                assert_close_scaled(out[k], ref_out[k], OUT_RTOL, f"{type(model).__name__} {k}")
            for k in ref_grad:
                assert_close_scaled(grad[k], ref_grad[k], GRAD_RTOL, f"{type(model).__name__} grad {k}")


@pytest.mark.parametrize("key", sorted(METHODS))
@pytest.mark.parametrize("device", DEVICES)
def test_every_distillation_loss_matches_the_cpu(device, key):
    """The loss value and the gradients of the student and of the loss's own parameters."""
    split = make_split("train", 48, 1)
    teacher, student = make_models(LENGTHS, **NO_DROPOUT)
    kd = make_kd(key, student, teacher, split, 16, torch.device("cpu"))
    batch = next(split.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0), n_negatives=8))
    if kd.loss.needs_negatives != 8:
        batch = replace(batch, negatives=None)
    results = {}
    for dev in ("cpu", device):
        # one deepcopy of the three objects keeps the references between them
        s, t, loss = copy.deepcopy((student, teacher, kd.loss))
        s, t, loss = s.to(dev), t.to(dev), loss.to(dev)
        d = torch.device(dev)
        objective = Objective(s, replace(kd, teacher=t, loss=loss), split.to(d), 16, d, teacher_cache_mb=100)
        s.train()
        total, parts = objective(batch.to(d))
        total.backward()
        grads = {f"student.{k}": p.grad.clone() for k, p in s.named_parameters() if p.grad is not None}
        grads |= {f"loss.{k}": p.grad.clone() for k, p in loss.named_parameters() if p.grad is not None}
        results[dev] = (parts["kd"].detach(), grads)
    (ref_kd, ref_grads), (kd_val, grads) = results["cpu"], results[device]
    assert math.isfinite(float(ref_kd))
    assert_close_scaled(kd_val, ref_kd, OUT_RTOL, f"{key} loss")
    assert set(grads) == set(ref_grads) and ref_grads
    for k in ref_grads:
        assert_close_scaled(grads[k], ref_grads[k], GRAD_RTOL, f"{key} grad {k}")


class TransferCounter(TorchDispatchMode):
    """Counts operations that move data between devices: an operation whose tensor arguments
    and results live on more than one device (``.to``/``copy_`` across devices, indexing a
    CUDA tensor with a CPU index...). A 0-dim CPU tensor next to device tensors is passed as a
    scalar (no copy) and is not counted."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [
            t
            for t in tree_flatten((args, kwargs or {}, out))[0]
            if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)
        ]
        if len({t.device.type for t in tensors}) > 1:
            self.ops.append(str(func))
        return out


def test_transfer_counter_sees_copies_between_devices():
    """The counter of the next test, on CPU and the 'meta' device (no GPU needed)."""
    with TransferCounter() as c:
        x = torch.ones(4)
        x + x
        y = x.to("meta")
        torch.empty(4, device="meta").copy_(x)
        y * torch.tensor(2.0)  # 0-dim CPU scalar: not a copy
    assert c.ops == ["aten._to_copy.default", "aten.copy_.default"]


@contextmanager
def cache_spy(store: list):
    real = loop.TeacherCache.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        store.append(self)

    loop.TeacherCache.__init__ = init
    try:
        yield
    finally:
        loop.TeacherCache.__init__ = real


@pytest.mark.parametrize("device", DEVICES)
def test_training_run_keeps_teacher_cache_on_device_and_copies_nothing_per_step(tmp_path, device):
    """EDAM-S with the teacher's maps cached: one epoch over 2 and over 4 batches moves the same
    number of tensors between host and device (set-up and once-per-epoch work only)."""
    counts, caches = {}, []
    for n_train in (32, 64):
        split = make_split("train", n_train, 1)
        teacher, student = make_models(LENGTHS)
        kd = make_kd("edam_s", student, teacher, split, 16, torch.device("cpu"))
        cfg = replace(CFG, epochs=1, device=device, teacher_cache_mb=100)
        with cache_spy(caches), TransferCounter() as counter:
            res = train(
                student,
                split,
                make_split("valid", 16, 2),
                cfg,
                seed=3,
                run_label=f"{device}{n_train}",
                resume_path=tmp_path / f"{n_train}.pt",
                config_hash="h",
                kd=kd,
                progress=False,
            )
        assert math.isfinite(res.history[0]["train_loss"])
        counts[n_train] = counter.ops
    assert len(caches) == 2
    for cache in caches:
        assert cache.has_internals
        tensors = [t for pair in cache.outputs.values() for t in pair]
        tensors += [t for field in cache.internals.values() for layers in field.values() for t in layers]
        assert {t.device.type for t in tensors} == {device}
    assert len(counts[32]) == len(counts[64]), (counts[32], counts[64])


@pytest.mark.parametrize("key", ["crd_attention", "edam_s", "hinton"])
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_run(tmp_path, device, key):
    split = make_split("train", 64, 1)
    teacher, student = make_models(LENGTHS)
    kd = make_kd(key, student, teacher, split, 16, torch.device("cpu"))
    res = train(
        student,
        split,
        make_split("valid", 16, 2),
        replace(CFG, epochs=2, device=device, precision="bf16"),
        seed=3,
        run_label=f"{device}-bf16",
        resume_path=tmp_path / "bf16.pt",
        config_hash="h",
        kd=kd,
        progress=False,
    )
    assert res.epochs_run == 2
    assert all(math.isfinite(v) for row in res.history for v in row.values())
    for name, buf in kd.loss.named_buffers():
        if name.endswith(("bank_s", "bank_t")):
            assert buf.dtype == torch.float32 and buf.device.type == device
