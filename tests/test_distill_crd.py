"""CRD: golden value against the reference formulas (numpy), Z, memory updates, gradients,
negatives, row bins and the memory bound."""

import copy
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from mmdistill.data.dataset import Batch
from mmdistill.distill import DistillContext, build_loss
from mmdistill.distill.crd import bank_scores, bin_matrix
from mmdistill.models.outputs import NOTHING, ModelOutput, Request

PAIRS = ("V<-A", "V<-L")


def _out(B=4, C=7, P=6, L=2, H=2, Tq=6, Tk=6, d=4, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    att = {p: [r(B, H, Tq, Tk) for _ in range(L)] for p in PAIRS}
    return ModelOutput(
        r(B, C),
        r(B, P),
        attention=att,
        maps={p: [x.softmax(-1) for x in v] for p, v in att.items()},
        post_attention={p: [r(B, Tq, d) for _ in range(L)] for p in PAIRS},
    )


def _remap(out):
    """The same output with its maps computed afresh from its scores (a new graph per pass)."""
    return ModelOutput(
        out.logits,
        out.penultimate,
        attention=out.attention,
        post_attention=out.post_attention,
        maps={p: [x.softmax(-1) for x in v] for p, v in out.attention.items()},
    )


def _ctx(level, s, t, n_data=50, pairs=PAIRS):
    return DistillContext(level=level, pairs=pairs, n_data=n_data, probe=lambda sr, tr: (s, t))


def _batch(B, K, n_data=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(n_data, generator=g)[:B]
    return Batch(
        {}, torch.zeros(B, dtype=torch.long), torch.zeros(B), index, torch.randint(0, n_data, (B, K), generator=g)
    )


SMALL = {"nce_k": 10, "feat_dim": 8, "row_bins": 3}


@pytest.mark.parametrize("level", ["final", "penultimate", "post_attention", "attention"])
def test_finite_and_gradients_student_and_heads_only(level):
    s = _out(grad=True, seed=1)
    t = _out(Tq=6, Tk=9, d=5, P=8, grad=True, seed=2)  # teacher rows longer, other widths
    loss = build_loss("crd", _ctx(level, s, t), SMALL)
    v = loss(s, t, _batch(4, 10))
    assert v.dim() == 0 and torch.isfinite(v)
    v.backward()
    s_leaves = (
        [s.logits]
        if level == "final"
        else [s.penultimate]
        if level == "penultimate"
        else [x for p in PAIRS for x in getattr(s, level)[p]]
    )
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s_leaves)
    t_leaves = [t.logits, t.penultimate] + [x for p in PAIRS for x in t.attention[p] + t.post_attention[p]]
    assert all(x.grad is None for x in t_leaves)
    for unit in loss.units.values():
        for head in (unit.embed_s, unit.embed_t):
            assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_gradient_reaches_stand_in_student_module():
    student = nn.Linear(5, 6)  # stand-in for a model's penultimate layer
    x = torch.randn(4, 5)
    t = _out(P=3, seed=3)
    probe_s = _out(P=6)
    loss = build_loss("crd", _ctx("penultimate", probe_s, t), SMALL)
    s = ModelOutput(torch.zeros(4, 7), student(x))
    loss(s, t, _batch(4, 10)).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0


def _np_loss(fs, ft, bank_s, bank_t, z_s, z_t, idx, T, n_data):
    """Reference CRD written directly from the formulas, in numpy (float64)."""
    vs = fs / np.linalg.norm(fs, axis=1, keepdims=True)
    vt = ft / np.linalg.norm(ft, axis=1, keepdims=True)
    B, K1 = idx.shape
    K = K1 - 1
    pn = 1.0 / n_data
    total = 0.0
    for v, bank, z in ((vs, bank_t, z_s), (vt, bank_s, z_t)):  # student anchor, teacher anchor
        out = 0.0
        for i in range(B):
            P = [math.exp(float(bank[idx[i, k]] @ v[i]) / T) / z for k in range(K1)]
            out += math.log(P[0] / (P[0] + K * pn + 1e-7))
            out += sum(math.log(K * pn / (P[k] + K * pn + 1e-7)) for k in range(1, K1))
        total += -out / B
    return total


def _unit_rows(rng, n, f):
    x = rng.normal(size=(n, f))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _golden_setup():
    n_data, fdim, T = 5, 3, 0.5
    fs = np.array([[1.0, 2.0, 0.5], [-1.0, 0.3, 0.2]])
    ft = np.array([[0.2, 1.0, -0.4], [0.7, -0.5, 1.5]])
    s = ModelOutput(torch.tensor(fs, dtype=torch.float32), torch.zeros(2, 1))
    t = ModelOutput(torch.tensor(ft, dtype=torch.float32), torch.zeros(2, 1))
    loss = build_loss("crd", _ctx("final", s, t, n_data=n_data), {"nce_k": 2, "feat_dim": fdim, "nce_t": T})
    unit = loss.units["final"]
    with torch.no_grad():  # identity heads: the embeddings are the normalized inputs
        for head in (unit.embed_s, unit.embed_t):
            head.weight.copy_(torch.eye(fdim)[None])
            head.bias.zero_()
    rng = np.random.default_rng(0)
    bank_s, bank_t = _unit_rows(rng, n_data, fdim), _unit_rows(rng, n_data, fdim)
    unit.memory.bank_s.copy_(torch.tensor(bank_s)[None])
    unit.memory.bank_t.copy_(torch.tensor(bank_t)[None])
    batch = Batch(
        {}, torch.zeros(2, dtype=torch.long), torch.zeros(2), torch.tensor([3, 1]), torch.tensor([[0, 4], [2, 2]])
    )
    idx = np.array([[3, 0, 4], [1, 2, 2]])
    return loss, unit, s, t, batch, (fs, ft, bank_s, bank_t, idx, T, n_data)


def test_golden_value_with_known_z():
    loss, unit, s, t, batch, (fs, ft, bs, bt, idx, T, n) = _golden_setup()
    unit.memory.z.copy_(torch.tensor([[2.5], [0.8]]))
    got = loss(s, t, batch).item()
    want = _np_loss(fs, ft, bs, bt, 2.5, 0.8, idx, T, n)
    assert math.isclose(got, want, rel_tol=1e-5)


def test_z_estimated_on_first_batch_then_kept():
    loss, unit, s, t, batch, (fs, ft, bs, bt, idx, T, n) = _golden_setup()
    loss.eval()  # keep the banks fixed so that the numpy side sees the same contents
    vs = fs / np.linalg.norm(fs, axis=1, keepdims=True)
    vt = ft / np.linalg.norm(ft, axis=1, keepdims=True)
    z_s = np.mean([[math.exp(bt[idx[i, k]] @ vs[i] / T) for k in range(3)] for i in range(2)]) * n
    z_t = np.mean([[math.exp(bs[idx[i, k]] @ vt[i] / T) for k in range(3)] for i in range(2)]) * n
    got = loss(s, t, batch).item()
    assert np.allclose(unit.memory.z[:, 0].numpy(), [z_s, z_t], rtol=1e-5)
    assert math.isclose(got, _np_loss(fs, ft, bs, bt, z_s, z_t, idx, T, n), rel_tol=1e-5)
    s2 = ModelOutput(s.logits * -3 + 1, s.penultimate)
    loss(s2, t, batch)
    assert np.allclose(unit.memory.z[:, 0].numpy(), [z_s, z_t], rtol=1e-6)  # kept
    assert "units.final.memory.z" in loss.state_dict()  # checkpointed


def test_memory_update_moves_rows_toward_embeddings_unit_norm():
    loss, unit, s, t, batch, (fs, ft, bs, bt, idx, T, n) = _golden_setup()
    loss.train()
    loss(s, t, batch)
    before = unit.memory.bank_s.clone()  # the update is deferred to the next pass or save ...
    state = loss.state_dict()  # ... and a checkpoint holds it
    assert torch.equal(before[0], torch.tensor(bs, dtype=before.dtype))
    new_s, new_t = state["units.final.memory.bank_s"][0].numpy(), state["units.final.memory.bank_t"][0].numpy()
    for new, old, f in ((new_s, bs, fs), (new_t, bt, ft)):
        v = f / np.linalg.norm(f, axis=1, keepdims=True)
        for row, i in ((0, 3), (1, 1)):
            want = 0.5 * old[i] + 0.5 * v[row]
            assert np.allclose(new[i], want / np.linalg.norm(want), atol=1e-6)
            assert new[i] @ v[row] > old[i] @ v[row]  # closer to the new embedding
        assert np.allclose(np.linalg.norm(new, axis=1)[[1, 3]], 1.0, atol=1e-6)
        untouched = [0, 2, 4]
        assert np.allclose(new[untouched], old[untouched])


def test_eval_mode_leaves_banks_alone():
    loss, unit, s, t, batch, _ = _golden_setup()
    before = unit.memory.bank_s.clone()
    loss.eval()
    loss(s, t, batch)
    assert torch.equal(before, unit.memory.bank_s)


def test_dense_and_gathered_scores_agree():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(3, 20, 4, generator=g)
    v = torch.randn(3, 2, 4, generator=g)
    few = torch.randint(0, 20, (2, 5), generator=g)  # 10 <= 20 rows: gathered
    many = torch.randint(0, 20, (2, 15), generator=g)  # 30 > 20 rows: dense product
    for idx in (few, many):
        want = torch.stack([torch.stack([bank[gi, idx[b]] @ v[gi, b] for b in range(2)]) for gi in range(3)])
        assert torch.allclose(bank_scores(bank, v, idx), want, atol=1e-5)


def test_k_is_clipped_with_a_warning(caplog):
    s, t = _out(), _out()
    with caplog.at_level(logging.WARNING, logger="mmdistill.distill.crd"):
        loss = build_loss("crd", _ctx("final", s, t, n_data=12), {"nce_k": 100, "feat_dim": 4})
    assert loss.needs_negatives == 11
    assert "nce_k=100" in caplog.text
    assert torch.isfinite(loss(s, t, _batch(4, 11, n_data=12)))
    assert build_loss("crd", _ctx("final", s, t, n_data=12), {"nce_k": 5, "feat_dim": 4}).needs_negatives == 5


def test_negatives_are_checked():
    s, t = _out(), _out()
    loss = build_loss("crd", _ctx("final", s, t), {"nce_k": 10, "feat_dim": 4})
    b = _batch(4, 10)
    with pytest.raises(ValueError, match="negatives"):
        loss(s, t, Batch(b.inputs, b.label, b.score, b.index, None))
    with pytest.raises(ValueError, match=r"\(4, 10\)"):
        loss(s, t, _batch(4, 7))


def test_requests_options_and_levels():
    s, t = _out(), _out()
    for level, want in (
        ("final", NOTHING),
        ("penultimate", NOTHING),
        ("attention", Request(maps=frozenset(["V<-A"]))),
        ("post_attention", Request(post_attention=frozenset(["V<-A"]))),
    ):
        loss = build_loss("crd", _ctx(level, s, t, pairs=("V<-A",)), SMALL)
        assert loss.student_request() == want and loss.teacher_request() == want
        assert set(loss.units) == ({"V<-A"} if level in ("attention", "post_attention") else {level})
    # eq. 4 (before out_proj) by default; after out_proj on request
    projected = build_loss("crd", _ctx("post_attention", s, t, pairs=("V<-A",)), {**SMALL, "post_output": "projected"})
    want = Request(post_attention=frozenset(["V<-A"]), post_projection=True)
    assert projected.student_request() == projected.teacher_request() == want
    with pytest.raises(ValueError, match="post_output"):
        build_loss("crd", _ctx("post_attention", s, t), {**SMALL, "post_output": "after"})
    with pytest.raises(TypeError, match="nce_m"):
        build_loss("crd", _ctx("final", s, t), {"nce_m": 0.5})
    with pytest.raises(ValueError, match="nce_t"):
        build_loss("crd", _ctx("final", s, t), {"nce_t": -1.0})


def test_group_counts_per_level():
    s, t = _out(L=2, Tq=6), _out(L=2, Tq=6)
    att = build_loss("crd", _ctx("attention", s, t), SMALL)
    assert att.units["V<-A"].memory.bank_s.shape == (2 * 3, 50, 8)  # layers x row bins
    exact = build_loss("crd", _ctx("attention", s, t), {**SMALL, "row_bins": None})
    assert exact.units["V<-A"].memory.bank_s.shape == (2 * 6, 50, 8)  # one bin per row
    post = build_loss("crd", _ctx("post_attention", s, t), SMALL)
    assert post.units["V<-L"].embed_s.weight.shape == (2, 6 * 4, 8)  # per layer, flattened Tq*d


def test_bins_average_rows():
    A = bin_matrix(7, 3)
    assert torch.allclose(A.sum(1), torch.ones(3))
    assert (A > 0).sum().item() == 7 and all((A[:, j] > 0).sum() == 1 for j in range(7))
    assert torch.equal(bin_matrix(5, 5), torch.eye(5))  # one bin per row: exact eq. 9
    maps = torch.rand(2, 7, 4).softmax(-1)
    assert torch.allclose(torch.einsum("rq,bqk->brk", A, maps).sum(-1), torch.ones(2, 3))


def test_row_bins_errors():
    s, t = _out(Tq=6), _out(Tq=4)
    with pytest.raises(ValueError, match="row_bins"):
        build_loss("crd", _ctx("attention", s, t), {**SMALL, "row_bins": None})
    with pytest.raises(ValueError, match="row_bins=5"):
        build_loss("crd", _ctx("attention", s, t), {**SMALL, "row_bins": 5})
    ok = build_loss("crd", _ctx("attention", s, t), {**SMALL, "row_bins": 4})  # proportional bins
    assert torch.isfinite(ok(s, t, _batch(4, 10)))


def test_bank_size_estimate_and_bound():
    s, t = _out(), _out()
    loss = build_loss("crd", _ctx("attention", s, t), SMALL)
    assert math.isclose(loss.bank_mb, 2 * (2 * 2 * 3) * 50 * 8 * 4 / 1e6)
    # MOSEI sizes with one bin per row: 2 sides x (2 pairs x 5 layers x 500 rows) x 16326 x 128
    s = _out(B=1, H=1, L=5, Tq=500, Tk=500)
    with pytest.raises(ValueError, match=r"83589 MB.*row_bins.*max_bank_mb") as err:
        build_loss("crd", _ctx("attention", s, s, n_data=16326), {"row_bins": None})
    assert "feat_dim" in str(err.value)
    with pytest.raises(ValueError, match="max_bank_mb=100"):
        build_loss("crd", _ctx("attention", s, s, n_data=16326), {"row_bins": 4, "max_bank_mb": 100})


@pytest.mark.parametrize("K", [4, 30])  # 4 x 5 < 50 rows: gathered scores; 4 x 31 > 50: whole-bank product
def test_training_step_backward_sees_the_banks_before_their_update(K):
    s, t = _out(grad=True, seed=5), _out(seed=6)
    train = build_loss("crd", _ctx("attention", s, t), {**SMALL, "nce_k": K}).train()
    frozen = copy.deepcopy(train).eval()  # same heads, banks and (unset) Z; never updates
    before = train.units["V<-A"].memory.bank_s.clone()
    batch = _batch(4, K)
    v = train(_remap(s), t, batch)
    v.backward()  # the step's update waits until this backward pass is done
    assert torch.equal(before, train.units["V<-A"].memory.bank_s)
    got = [x.grad.clone() for x in s.attention["V<-A"]]
    for x in s.attention["V<-A"] + s.attention["V<-L"]:
        x.grad = None
    w = frozen(_remap(s), t, batch)
    w.backward()
    assert torch.allclose(v, w)
    assert all(torch.allclose(a, x.grad) for a, x in zip(got, s.attention["V<-A"]))


def test_z_restored_from_a_checkpoint_is_kept():
    loss, unit, s, t, batch, _ = _golden_setup()
    loss(s, t, batch)
    state = copy.deepcopy(loss.state_dict())
    fresh, funit, *_ = _golden_setup()
    fresh.load_state_dict(state)
    fresh(ModelOutput(s.logits * 5, s.penultimate), t, batch)
    assert torch.equal(funit.memory.z, state["units.final.memory.z"])


def test_bank_bound_at_other_levels_names_feat_dim():
    s = _out(L=5, Tq=50, d=30)
    with pytest.raises(ValueError, match=r"lower feat_dim, distill fewer pairs, or raise max_bank_mb"):
        build_loss("crd", _ctx("post_attention", s, s, n_data=16326), {"max_bank_mb": 50})


@pytest.mark.parametrize("K", [4, 30])
def test_deferred_update_matches_immediate_update(K):
    """Two training steps: the second step's loss and gradients are those of banks updated
    right after the first step's scores (the reference's order)."""
    s, t = _out(grad=True, seed=7), _out(seed=8)
    deferred = build_loss("crd", _ctx("attention", s, t), {**SMALL, "nce_k": K}).train()
    immediate = copy.deepcopy(deferred)
    b1, b2 = _batch(4, K, seed=1), _batch(4, K, seed=2)
    deferred(_remap(s), t, b1).backward()
    for x in s.attention["V<-A"] + s.attention["V<-L"]:
        x.grad = None
    v2 = deferred(_remap(s), t, b2)
    v2.backward()
    got = [x.grad.clone() for x in s.attention["V<-A"]]
    for x in s.attention["V<-A"] + s.attention["V<-L"]:
        x.grad = None
    immediate(_remap(s), t, b1)
    for unit in immediate.units.values():
        unit.memory.flush()  # applied at once, before any backward pass
    w2 = immediate(_remap(s), t, b2)
    w2.backward()
    assert torch.allclose(v2, w2)
    assert all(torch.allclose(a, x.grad) for a, x in zip(got, s.attention["V<-A"]))


def test_second_forward_before_backward_is_an_error_not_a_silent_mistake():
    s, t = _out(grad=True, seed=9), _out(seed=10)
    loss = build_loss("crd", _ctx("attention", s, t), {**SMALL, "nce_k": 30}).train()
    first = loss(_remap(s), t, _batch(4, 30, seed=1))
    loss(_remap(s), t, _batch(4, 30, seed=2))  # applies the first step's update in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()
