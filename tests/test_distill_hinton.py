"""Hinton KD: value against a direct formula, zero at equality, gradients, options."""

import math

import numpy as np
import pytest
import torch

from mmdistill.data.dataset import Batch
from mmdistill.distill import DistillContext, build_loss
from mmdistill.models.outputs import NOTHING, ModelOutput


def _out(logits):
    return ModelOutput(logits=logits, penultimate=torch.zeros(logits.shape[0], 4))


def _ctx(level="final"):
    def probe(sreq, treq):  # never needed by this loss
        raise AssertionError("hinton must not probe the models")

    return DistillContext(level=level, pairs=(), n_data=10, probe=probe)


def _batch(b):
    return Batch({}, torch.zeros(b, dtype=torch.long), torch.zeros(b), torch.arange(b))


def test_matches_formula():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    loss = build_loss("hinton", _ctx(), {"temperature": 2.0})
    got = loss(_out(zs), _out(zt), _batch(5)).item()
    ps = np.exp(zs.numpy() / 2) / np.exp(zs.numpy() / 2).sum(1, keepdims=True)
    pt = np.exp(zt.numpy() / 2) / np.exp(zt.numpy() / 2).sum(1, keepdims=True)
    want = 4.0 * (pt * (np.log(pt) - np.log(ps))).sum(1).mean()
    assert math.isclose(got, want, rel_tol=1e-5)


def test_zero_when_equal_positive_otherwise():
    loss = build_loss("hinton", _ctx(), {})
    z = torch.randn(3, 7)
    assert abs(loss(_out(z), _out(z.clone()), _batch(3)).item()) < 1e-6
    assert loss(_out(z), _out(z + torch.randn(3, 7)), _batch(3)).item() > 1e-4


def test_gradient_student_only():
    loss = build_loss("hinton", _ctx(), {})
    zs = torch.randn(3, 7, requires_grad=True)
    zt = torch.randn(3, 7, requires_grad=True)
    loss(_out(zs), _out(zt), _batch(3)).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def test_contract():
    loss = build_loss("hinton", _ctx(), {})
    assert loss.name == "hinton" and loss.temperature == 4.0
    assert loss.student_request() == NOTHING and loss.teacher_request() == NOTHING
    assert loss.needs_negatives == 0
    with pytest.raises(TypeError, match="tau"):
        build_loss("hinton", _ctx(), {"tau": 3})
    with pytest.raises(ValueError, match="attention"):
        build_loss("hinton", _ctx("attention"), {})
    with pytest.raises(ValueError, match="temperature"):
        build_loss("hinton", _ctx(), {"temperature": 0})
