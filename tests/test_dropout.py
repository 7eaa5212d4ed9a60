"""CPU dropout masks from 16-bit uniforms: rate, scale, lanes, gradient, determinism."""

import pytest
import torch
import torch.nn.functional as F

from mmdistill.models.dropout import Dropout, dropout, keep_mask, quantized_p


def test_quantized_probability():
    assert quantized_p(0.1) == 6554 / 65536
    for p in (0.05, 0.1, 0.2, 0.25, 0.5, 0.9):
        assert abs(quantized_p(p) - p) <= 2**-17


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_drop_rate_and_every_16_bit_lane(p):
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([400_000]), p, torch.device("cpu"))
    n = keep.numel()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs((~keep).float().mean().item() - quantized_p(p)) < 5 * sd
    # each of the four 16-bit lanes of a 64-bit draw drops at the same rate (a lane that
    # missed the draw's top bit, as random_() without a range gives, would drop at ~2p or 0)
    lanes = (~keep).view(-1, 4).float().mean(0)
    assert torch.all((lanes - quantized_p(p)).abs() < 5 * sd * 2)


def test_scale_keeps_the_expectation_and_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.full((200_000,), 3.0, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    scale = 1 / (1 - quantized_p(0.2))
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 3.0 * scale))
    assert abs(y.mean().item() - 3.0) < 0.05
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)


def test_identity_in_eval_and_at_zero_and_torch_at_one():
    x = torch.randn(5, 7)
    m = Dropout(0.5).eval()
    assert m(x) is x and dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), F.dropout(x, 1.0, training=True))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_same_seed_same_masks_other_seed_other_masks():
    x = torch.ones(1000)
    masks = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        masks.append(dropout(x, 0.1, training=True))
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
