"""DistillVLM: layer mapping, attention term, InfoNCE against its formula, FIFO queue,
gradients (student and projection, never the teacher), token-count check, real models."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmdistill.data.dataset import Batch
from mmdistill.distill import DistillContext, build_loss
from mmdistill.distill.distillvlm import TokenQueue, attention_distance, info_nce, layer_map
from mmdistill.modalities import FEATURE_DIM
from mmdistill.models import ModelConfig, build_student, build_teacher

PAIRS = ("V<-A", "V<-L")


pytestmark = pytest.mark.usefixtures("one_thread")


def _out(B=3, L=2, H=2, Tq=5, Tk=4, d=6, grad=False, seed=0):
    from mmdistill.models.outputs import ModelOutput

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    att = {p: [r(B, H, Tq, Tk) for _ in range(L)] for p in PAIRS}
    return ModelOutput(
        r(B, 7),
        r(B, 4),
        attention=att,
        maps={p: [x.softmax(-1) for x in v] for p, v in att.items()},
        post_attention={p: [r(B, Tq, d) for _ in range(L)] for p in PAIRS},
    )


def _ctx(s, t, pairs=PAIRS, level="attention"):
    return DistillContext(level=level, pairs=pairs, n_data=10, probe=lambda sr, tr: (s, t))


def _batch(B=3):
    return Batch({}, torch.zeros(B, dtype=torch.long), torch.zeros(B), torch.arange(B))


def test_layer_map():
    assert layer_map(2, 4) == [(0, 1), (1, 3)]
    assert layer_map(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert layer_map(1, 5) == [(0, 4)]
    with pytest.raises(ValueError, match="multiple"):
        layer_map(2, 3)


def test_attention_distance_zero_at_equality_and_formula():
    s = torch.randn(2, 3, 4, 5).softmax(-1)
    assert attention_distance(s, s.clone()).item() < 1e-12
    t = torch.randn(2, 3, 4, 5).softmax(-1)
    want = ((s - t) ** 2).sum(-1).mean()
    assert math.isclose(attention_distance(s, t).item(), want.item(), rel_tol=1e-6)
    # different head counts: head-averaged maps
    t1 = torch.randn(2, 1, 4, 5).softmax(-1)
    want = ((s.mean(1) - t1[:, 0]) ** 2).sum(-1).mean()
    assert math.isclose(attention_distance(s, t1).item(), want.item(), rel_tol=1e-6)


def test_info_nce_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(2, 4, 3, generator=g), dim=-1)
    k = F.normalize(torch.randn(2, 4, 3, generator=g), dim=-1)
    queue = F.normalize(torch.randn(2, 5, 3, generator=g), dim=-1)
    T = 0.1
    want = 0.0
    for gi in range(2):
        for n in range(4):
            pos = math.exp((q[gi, n] @ k[gi, n]).item() / T)
            neg = sum(math.exp((q[gi, n] @ queue[gi, j]).item() / T) for j in range(5))
            want += -math.log(pos / (pos + neg)) / 8
    assert math.isclose(info_nce(q, k, queue, T).item(), want, rel_tol=1e-5)


def test_queue_is_fifo():
    torch.manual_seed(0)
    q = TokenQueue(groups=2, size=5, dim=3)
    tok = lambda start, n: torch.arange(start, start + n).float().view(1, n, 1).expand(2, n, 3)  # noqa: E731
    q.push(tok(0, 3))
    assert q.ptr.item() == 3
    assert q.queue[0, :3, 0].tolist() == [0, 1, 2]
    q.push(tok(3, 4))  # wraps: positions 3, 4, 0, 1; the oldest (0, 1) are overwritten first
    assert q.ptr.item() == 2
    assert q.queue[0, :, 0].tolist() == [5, 6, 2, 3, 4]
    assert torch.equal(q.queue[1], q.queue[0])
    q.push(tok(10, 7))  # more tokens than the queue holds: the last 5 are kept, in order
    assert q.queue[0, :, 0].tolist() == [15, 16, 12, 13, 14]  # written from ptr 2 on, oldest first
    assert q.ptr.item() == 2
    assert set(q.state_dict()) == {"queue", "ptr"}


def test_finite_gradients_student_and_projection_never_teacher():
    s = _out(grad=True, seed=1)
    t = _out(L=4, H=3, d=9, grad=True, seed=2)  # 4 teacher layers for 2 student layers, other width/heads
    loss = build_loss("distillvlm", _ctx(s, t), {"queue_size": 16})
    assert loss.layer_maps == {p: [(0, 1), (1, 3)] for p in PAIRS}
    v = loss(s, t, _batch())
    assert v.dim() == 0 and torch.isfinite(v) and v.item() > 0
    v.backward()
    for p in PAIRS:
        assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s.attention[p] + s.post_attention[p])
        assert all(x.grad is None for x in t.attention[p] + t.post_attention[p])
        assert loss.proj[p].weight.shape == (9, 6) and loss.proj[p].weight.grad.abs().sum() > 0
    assert s.logits.grad.abs().sum() > 0 and t.logits.grad is None
    assert {n.split(".")[0] for n, _ in loss.named_parameters()} == {"proj"}


def test_terms_weights_and_epoch_log():
    s, t = _out(seed=1), _out(seed=2)
    parts = {}
    for name in ("attn", "hidden", "logit"):
        w = {k: float(k == name) for k in ("attn_weight", "hidden_weight", "logit_weight")}
        loss = build_loss("distillvlm", _ctx(s, t), {"queue_size": 8, **w, name + "_weight": 1.0})
        loss.eval()
        parts[name] = loss(s, t, _batch()).item()
    loss = build_loss("distillvlm", _ctx(s, t), {"queue_size": 8, "attn_weight": 2.0})
    loss.eval()
    total = loss(s, t, _batch()).item()
    # the queues are random at construction: compare through the logged (unweighted) terms
    logged = loss.epoch_log()
    assert set(logged) == {"attn", "hidden", "logit"}
    assert math.isclose(total, 2 * logged["attn"] + logged["hidden"] + logged["logit"], rel_tol=1e-5)
    assert math.isclose(logged["attn"], parts["attn"], rel_tol=1e-6)
    assert math.isclose(logged["logit"], parts["logit"], rel_tol=1e-6)
    assert loss.epoch_log() == {}
    # identical student and teacher: attention and logit terms vanish
    same = build_loss("distillvlm", _ctx(s, s), {"queue_size": 8})
    same(s, s, _batch())
    logged = same.epoch_log()
    assert logged["attn"] < 1e-10 and abs(logged["logit"]) < 1e-6


def test_queue_updates_only_in_training_mode_with_teacher_tokens():
    s, t = _out(seed=1, B=2), _out(seed=2, B=2)
    loss = build_loss("distillvlm", _ctx(s, t), {"queue_size": 32})
    before = loss.queues[0].queue.clone()
    loss.eval()
    loss(s, t, _batch(2))
    assert torch.equal(loss.queues[0].queue, before)
    loss.train()
    loss(s, t, _batch(2))
    # 2 samples x 5 tokens enqueued per layer, normalized teacher states in sample-major order
    want = F.normalize(torch.stack(t.post_attention["V<-A"]), dim=-1).flatten(1, 2)  # (L, 10, d)
    assert torch.allclose(loss.queues[0].queue[:, :10], want)
    assert torch.equal(loss.queues[0].queue[:, 10:], before[:, 10:])
    assert loss.queues[0].ptr.item() == 10
    assert "queues.0.queue" in loss.state_dict()


def test_token_counts_must_match():
    s, t = _out(Tq=5), _out(Tq=4, seed=1)
    with pytest.raises(ValueError, match=r"V<-A.*\(5, 4\).*\(4, 4\).*proxy 'down'"):
        build_loss("distillvlm", _ctx(s, t), {})
    with pytest.raises(ValueError, match="multiple"):
        build_loss("distillvlm", _ctx(_out(L=2), _out(L=3)), {})
    with pytest.raises(ValueError, match="final"):
        build_loss("distillvlm", _ctx(s, s, level="final"), {})
    with pytest.raises(ValueError, match="queue_size"):
        build_loss("distillvlm", _ctx(s, s), {"queue_size": 0})
    with pytest.raises(TypeError, match="tau"):
        build_loss("distillvlm", _ctx(s, s), {"tau": 0.1})


def test_real_student_and_teacher_configuration_5():
    lengths = {"V": 6, "A": 6, "L": 3}
    cfg = ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 2})
    torch.manual_seed(0)
    teacher = build_teacher(cfg, ("V", "A", "L")).eval().requires_grad_(False)
    student = build_student(cfg, "language_audio", "V", lengths, "down")
    inputs = {m: torch.randn(4, lengths[m], FEATURE_DIM[m]) for m in lengths}

    def probe(sr, tr):
        with torch.no_grad():
            return student(inputs, sr), teacher(inputs, tr)

    loss = build_loss(
        "distillvlm", DistillContext(level="attention", pairs=PAIRS, n_data=4, probe=probe), {"queue_size": 16}
    )
    with torch.no_grad():
        t_out = teacher(inputs, loss.teacher_request())
    v = loss(student(inputs, loss.student_request()), t_out, _batch(4))
    v.backward()
    assert torch.isfinite(v)
    assert student.convs["A"].conv.weight.grad.abs().sum() > 0  # the audio proxy learns
    assert all(p.grad is None for p in teacher.parameters())
    full = build_student(cfg, "language_audio", "V", lengths, "full")
    with pytest.raises(ValueError, match="proxy 'down'"):
        build_loss(
            "distillvlm",
            DistillContext(
                level="attention", pairs=PAIRS, n_data=4, probe=lambda sr, tr: (full(inputs, sr), teacher(inputs, tr))
            ),
            {},
        )


def test_training_samples_tokens_and_enqueues_their_teacher_states():
    s, t = _out(seed=1, B=3, Tq=5), _out(seed=2, B=3, Tq=5)
    loss = build_loss("distillvlm", _ctx(s, t), {"queue_size": 32, "tokens": 4})
    torch.manual_seed(3)
    loss(s, t, _batch())
    assert loss.queues[0].ptr.item() == 4 and loss.queues[1].ptr.item() == 4
    teacher_tokens = F.normalize(torch.stack(t.post_attention["V<-A"]), dim=-1).flatten(1, 2)  # (L, 15, d)
    torch.manual_seed(3)
    pos = torch.randperm(15)[:4]
    assert torch.allclose(loss.queues[0].queue[:, :4], teacher_tokens[:, pos])  # same positions in each layer
    # eval mode: all 15 tokens are anchors, deterministic, nothing enqueued
    loss.eval()
    a, b = loss(s, t, _batch()), loss(s, t, _batch())
    assert torch.equal(a, b) and loss.queues[0].ptr.item() == 4
