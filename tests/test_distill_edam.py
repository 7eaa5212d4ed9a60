"""EDAM: minimum at equality, direct formula, heads, gradients, EDAM-S/T shapes, up-sampler."""

import math

import pytest
import torch

from mmdistill.data.dataset import Batch
from mmdistill.distill import DistillContext, build_loss
from mmdistill.distill.edam import interpolation_matrix
from mmdistill.models.outputs import ModelOutput, Request

PAIRS = ("V<-A", "V<-L")


def _out(att, B=3):
    """att: pair -> list over layers of (B, H, Tq, Tk) scores; the maps are their softmax, as a model's."""
    return ModelOutput(
        torch.zeros(B, 7),
        torch.zeros(B, 4),
        attention=att,
        maps={p: [x.softmax(-1) for x in v] for p, v in att.items()},
    )


def _scores(B=3, H=2, L=2, Tq=5, Tk=4, seed=0, grad=False, pairs=PAIRS):
    g = torch.Generator().manual_seed(seed)
    return {p: [torch.randn(B, H, Tq, Tk, generator=g).requires_grad_(grad) for _ in range(L)] for p in pairs}


def _ctx(s, t, pairs=PAIRS, level="attention"):
    return DistillContext(level=level, pairs=pairs, n_data=10, probe=lambda sr, tr: (s, t))


def _batch(B=3):
    return Batch({}, torch.zeros(B, dtype=torch.long), torch.zeros(B), torch.arange(B))


def _entropy(att, T=1.0, average_heads=False):
    """Mean row entropy of the temperature-softmax maps, averaged like the loss."""
    per_pair = []
    for layers in att.values():
        per_layer = []
        for x in layers:
            p = (x.detach() / T).softmax(-1)
            if average_heads:
                p = p.mean(1)
            per_layer.append(-(p * p.log()).sum(-1).mean())
        per_pair.append(torch.stack(per_layer).mean())
    return torch.stack(per_pair).mean()


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_teacher_target_minimal_at_equality(T):
    t = _out(_scores(seed=1))
    loss = build_loss("edam", _ctx(t, t), {"temperature": T})
    same = _out({p: [x.clone() for x in v] for p, v in t.attention.items()})
    gap = loss(same, t, _batch()) - _entropy(t.attention, T)
    assert abs(gap.item()) < 1e-5
    other = _out(_scores(seed=2))
    assert (loss(other, t, _batch()) - _entropy(t.attention, T)).item() > 1e-3


def test_heads_averaged_when_counts_differ():
    t = _out(_scores(H=3, seed=1))
    # a one-head student whose map is exactly the teacher's head-averaged map
    s = _out({p: [x.softmax(-1).mean(1, keepdim=True).log() for x in v] for p, v in t.attention.items()})
    loss = build_loss("edam", _ctx(s, t), {})
    gap = loss(s, t, _batch()) - _entropy(t.attention, average_heads=True)
    assert abs(gap.item()) < 1e-5
    s2 = _out(_scores(H=1, seed=4))
    assert (loss(s2, t, _batch()) - _entropy(t.attention, average_heads=True)).item() > 1e-3


def test_values_match_direct_formula_both_directions():
    s, t = _out(_scores(seed=1, L=3)), _out(_scores(seed=2, L=3))
    T = 2.0
    for direction, (a, b) in (("teacher_target", (t, s)), ("paper_literal", (s, t))):
        loss = build_loss("edam", _ctx(s, t), {"temperature": T, "direction": direction})
        want = 0.0
        for p in PAIRS:
            # -sum_k a_k log b_k per row; mean over rows/heads/batch, then layers, then pairs
            layer_vals = [
                -((x / T).softmax(-1) * (y / T).softmax(-1).log()).sum(-1).mean()
                for x, y in zip(a.attention[p], b.attention[p])
            ]
            want += sum(layer_vals) / len(layer_vals) / len(PAIRS)
        assert math.isclose(loss(s, t, _batch()).item(), float(want), rel_tol=1e-5)


@pytest.mark.parametrize("variant", ["S", "T"])
def test_finite_and_gradient_student_only(variant):
    s = _out(_scores(seed=1, grad=True, Tq=6, Tk=6))
    t = _out(_scores(seed=2, grad=True, Tq=6 if variant == "S" else 3, Tk=6 if variant == "S" else 4))
    loss = build_loss("edam", _ctx(s, t), {"variant": variant})
    v = loss(s, t, _batch())
    assert v.dim() == 0 and torch.isfinite(v)
    v.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for p in PAIRS for x in s.attention[p])
    assert all(x.grad is None for p in PAIRS for x in t.attention[p])
    # EDAM-S has nothing trainable; EDAM-T's up-sampler is learned by default (the paper's linear layers)
    assert (list(loss.parameters()) == []) == (variant == "S")


def test_fixed_upsampler_has_nothing_to_train():
    s = _out(_scores(seed=1, grad=True, Tq=6, Tk=6))
    t = _out(_scores(seed=2, Tq=3, Tk=4))
    loss = build_loss("edam", _ctx(s, t), {"variant": "T", "learn_upsampler": False})
    loss(s, t, _batch()).backward()
    assert list(loss.parameters()) == [] and len(list(loss.buffers())) == 4 * len(PAIRS)
    assert all(x.grad is not None for p in PAIRS for x in s.attention[p])


@pytest.mark.parametrize("options", [{"variant": "T"}, {"variant": "T", "learn_upsampler": True}])
def test_learned_upsampler_gets_gradient_teacher_does_not(options):
    s = _out(_scores(seed=1, grad=True, Tq=6, Tk=6))
    t = _out(_scores(seed=2, grad=True, Tq=3, Tk=4))
    loss = build_loss("edam", _ctx(s, t), options)  # unset: learned, as the paper
    loss(s, t, _batch()).backward()
    params = dict(loss.named_parameters())
    assert set(params) == {f"upsamplers.{p}.{n}" for p in PAIRS for n in ("w_k", "b_k", "w_q", "b_q")}
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for n, x in params.items() if "w_" in n)
    assert all(x.grad is None for p in PAIRS for x in t.attention[p])


def test_edam_t_upsampled_maps_have_student_shape_and_are_distributions():
    s = _out(_scores(Tq=7, Tk=9, H=2))
    t = _out(_scores(Tq=3, Tk=4, H=5, seed=3))
    loss = build_loss("edam", _ctx(s, t), {"variant": "T", "temperature": 1.5})
    for p in PAIRS:
        up = loss.teacher_scores(p, t.attention[p][0])
        assert up.shape == (3, 5, 7, 9)
        maps = (up / 1.5).softmax(-1)
        assert torch.allclose(maps.sum(-1), torch.ones(3, 5, 7))
    assert torch.isfinite(loss(s, t, _batch()))  # heads 2 vs 5: averaged maps


def test_interpolation_init_reproduces_constant_and_linear_maps():
    for n_in, n_out in ((4, 9), (9, 4), (5, 5), (2, 7)):
        W = interpolation_matrix(n_in, n_out)
        assert torch.allclose(W.sum(1), torch.ones(n_out))
        x = torch.linspace(-1.0, 2.0, n_in)
        assert torch.allclose(W @ x, torch.linspace(-1.0, 2.0, n_out), atol=1e-6)
    # a linear-in-both-axes score map is up-sampled exactly by the initialized up-sampler
    s, t = _out(_scores(Tq=7, Tk=10)), _out(_scores(Tq=4, Tk=5))
    loss = build_loss("edam", _ctx(s, t), {"variant": "T"})
    q_t, k_t = torch.linspace(0, 1, 4), torch.linspace(0, 1, 5)
    q_s, k_s = torch.linspace(0, 1, 7), torch.linspace(0, 1, 10)
    lin_t = (0.5 + 2 * q_t[:, None] - 3 * k_t[None, :]).expand(1, 1, 4, 5)
    want = (0.5 + 2 * q_s[:, None] - 3 * k_s[None, :]).expand(1, 1, 7, 10)
    assert torch.allclose(loss.teacher_scores("V<-A", lin_t), want, atol=1e-5)
    const = torch.full((1, 1, 4, 5), 1.7)
    assert torch.allclose(loss.teacher_scores("V<-A", const), torch.full((1, 1, 7, 10), 1.7))


def test_variant_s_rejects_mismatched_shapes():
    s, t = _out(_scores(Tq=6, Tk=6)), _out(_scores(Tq=6, Tk=4))
    with pytest.raises(ValueError, match=r"V<-A.*\(6, 6\).*\(6, 4\).*variant 'T'"):
        build_loss("edam", _ctx(s, t), {"variant": "S"})


def test_contract_and_options():
    s = _out(_scores(pairs=("V<-A", "V<-L", "A<-V")))
    loss = build_loss("edam", _ctx(s, s, pairs=("V<-L",)), {})
    pair = frozenset(["V<-L"])
    # default: the student's scores and maps, the teacher's maps (no softmax of the loss's own)
    assert loss.student_request() == Request(attention=pair, maps=pair)
    assert loss.teacher_request() == Request(maps=pair)
    # EDAM-T up-samples the teacher's scores; a temperature needs the scores on both sides
    t_var = build_loss("edam", _ctx(s, s, pairs=("V<-L",)), {"variant": "T"})
    assert t_var.student_request() == Request(attention=pair, maps=pair) and t_var.teacher_request() == Request(
        attention=pair
    )
    warm = build_loss("edam", _ctx(s, s, pairs=("V<-L",)), {"temperature": 2.0})
    assert warm.student_request() == warm.teacher_request() == Request(attention=pair)
    assert loss.needs_negatives == 0
    assert (loss.temperature, loss.direction, loss.variant) == (1.0, "teacher_target", "S")
    with pytest.raises(TypeError, match="temp"):
        build_loss("edam", _ctx(s, s), {"temp": 2.0})
    with pytest.raises(ValueError, match="direction"):
        build_loss("edam", _ctx(s, s), {"direction": "student_target"})
    with pytest.raises(ValueError, match="variant"):
        build_loss("edam", _ctx(s, s), {"variant": "X"})
    with pytest.raises(ValueError, match="learn_upsampler"):
        build_loss("edam", _ctx(s, s), {"learn_upsampler": True})  # variant S has no up-sampler
    with pytest.raises(ValueError, match="learn_upsampler"):
        build_loss("edam", _ctx(s, s), {"variant": "T", "learn_upsampler": "yes"})
    with pytest.raises(ValueError, match="final"):
        build_loss("edam", _ctx(s, s, level="final"), {})
    t3 = _out(_scores(L=3))
    with pytest.raises(ValueError, match="layers"):
        build_loss("edam", _ctx(_out(_scores(L=2)), t3), {})


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_row_cross_entropy_matches_autograd_composite(temperature):
    from mmdistill.distill.edam import row_cross_entropy

    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).softmax(-1) * 0.7  # rows need not sum to 1
    b = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    a.requires_grad_(True)
    b.requires_grad_(True)
    got = row_cross_entropy(a, b, temperature)
    want = -(a * torch.log_softmax(b / temperature, -1)).sum(-1).mean()
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda x, y: row_cross_entropy(x, y, temperature), (a, b))
    ga, gb = torch.autograd.grad(got, (a, b))
    wa, wb = torch.autograd.grad(want, (a, b))
    torch.testing.assert_close(ga, wa)
    torch.testing.assert_close(gb, wb)


@pytest.mark.parametrize("spread", [1.0, 60.0])
def test_map_cross_entropy_matches_row_cross_entropy(spread):
    """The log-softmax read off the model's own map equals the direct one, values and
    gradients, also when scores spread so far that most of a map underflows to 0."""
    from mmdistill.distill.edam import map_cross_entropy, row_cross_entropy

    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64).softmax(-1) * 0.8  # rows need not sum to 1
    b = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64) * spread
    a.requires_grad_(True)
    b.requires_grad_(True)
    if spread > 1:
        b32 = b.detach().float()
        assert (b32.softmax(-1) == 0).any()  # the float32 map has exact zeros: log p would be -inf there
        torch.testing.assert_close(
            map_cross_entropy(a.detach().float(), b32, b32.softmax(-1)), row_cross_entropy(a.detach().float(), b32, 1.0)
        )
    got = map_cross_entropy(a, b, b.softmax(-1))
    want = row_cross_entropy(a, b, 1.0)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, (a, b)), torch.autograd.grad(want, (a, b)))
    assert torch.autograd.gradcheck(lambda x, y: map_cross_entropy(x, y, y.softmax(-1)), (a, b))


@pytest.mark.parametrize("variant", ["S", "T"])
def test_models_own_maps_give_the_same_loss_and_gradients(variant):
    """The default path (the models' maps) against row_cross_entropy on the scores, with the
    teacher's target recomputed from its scores: same value and student gradients."""
    from mmdistill.distill.edam import row_cross_entropy

    s = _out(_scores(seed=1, grad=True, Tq=6, Tk=6))
    t = _out(_scores(seed=2, Tq=6 if variant == "S" else 3, Tk=6 if variant == "S" else 4))
    loss = build_loss("edam", _ctx(s, t), {"variant": variant})
    assert loss.student_maps and loss.teacher_maps == (variant == "S")
    got = loss(s, t, _batch())
    leaves = [x for p in PAIRS for x in s.attention[p]]
    g_got = torch.autograd.grad(got, leaves)
    want = sum(
        torch.stack(
            [
                row_cross_entropy(loss.teacher_scores(p, y).softmax(-1), x, 1.0)
                for x, y in zip(s.attention[p], t.attention[p])
            ]
        ).mean()
        for p in PAIRS
    ) / len(PAIRS)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, torch.autograd.grad(want, leaves))


def test_missing_maps_are_an_error():
    s, t = _out(_scores()), _out(_scores(seed=1))
    loss = build_loss("edam", _ctx(s, t), {})
    no_maps = ModelOutput(s.logits, s.penultimate, attention=s.attention)
    with pytest.raises(KeyError, match="student maps"):
        loss(no_maps, t, _batch())
    with pytest.raises(KeyError, match="teacher"):
        loss(s, ModelOutput(t.logits, t.penultimate, attention=t.attention), _batch())


@pytest.mark.parametrize("learn", [False, True])
def test_upsampler_matches_the_two_linear_maps(learn):
    from mmdistill.distill.edam import Upsampler

    g = torch.Generator().manual_seed(4)
    for tq_t, tk_t, tq_s, tk_s in ((5, 3, 5, 7), (4, 6, 9, 6), (5, 5, 5, 5), (3, 2, 6, 4)):
        up = Upsampler(tq_t, tk_t, tq_s, tk_s, learn)
        x = torch.randn(2, 3, tq_t, tk_t, generator=g)
        want = (up.w_q @ (x @ up.w_k.T + up.b_k)) + up.b_q[:, None]  # every axis, explicitly
        torch.testing.assert_close(up(x), want)
        assert up.skip_k == (not learn and tk_t == tk_s) and up.skip_q == (not learn and tq_t == tq_s)


def test_learned_upsampler_trains_with_the_student_and_stays_out_of_its_size(tmp_path):
    """EDAM-T through the training loop: the up-sampler's weights move (the optimizer holds
    them), they live in the loss, and the student's parameters and saved state lack them."""
    from mmdistill.bench import random_split
    from mmdistill.models import build_student, build_teacher, count_parameters
    from mmdistill.models.config import ModelConfig
    from mmdistill.train.loop import Distillation, TrainConfig, train

    lengths = {"V": 12, "A": 8, "L": 5}
    cfg = ModelConfig.from_dict(
        {
            "d_model": 8,
            "n_heads": 2,
            "n_layers": 1,
            "attn_dropout": 0.0,
            "relu_dropout": 0.0,
            "res_dropout": 0.0,
            "embed_dropout": 0.0,
            "out_dropout": 0.0,
            "conv_kernel": 3,
        }
    )
    split = random_split(lengths, 24, seed=0)
    torch.manual_seed(0)
    teacher = build_teacher(cfg, ("V", "A", "L")).eval()
    student = build_student(cfg, "language_audio", "V", lengths, "full")
    n_student = count_parameters(student)
    example = next(split.batches(8))

    def probe(sr, tr):
        with torch.no_grad():
            return student(example.inputs, sr), teacher(example.inputs, tr)

    ctx = DistillContext(level="attention", pairs=PAIRS, n_data=len(split), probe=probe)
    loss = build_loss("edam", ctx, {"variant": "T"})
    before = {k: v.detach().clone() for k, v in loss.named_parameters()}
    assert set(before) == {f"upsamplers.{p}.{n}" for p in PAIRS for n in ("w_k", "b_k", "w_q", "b_q")}
    # the teacher's maps are (Tq, Tk) = (8, 12) and (5, 12) for V<-A and V<-L; the student's (12, 12)
    assert loss.upsamplers["V<-A"].w_q.shape == (12, 8) and loss.upsamplers["V<-L"].w_q.shape == (12, 5)
    tcfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, grad_clip=1.0, lr_patience=5, lr_factor=0.5, early_stop=5)
    kd = Distillation(teacher=teacher, loss=loss, alpha=1.0, beta=1.0)
    train(
        student,
        split,
        split,
        tcfg,
        seed=0,
        run_label="t",
        resume_path=tmp_path / "r.pt",
        config_hash="x",
        kd=kd,
        progress=False,
    )
    moved = {k: (v.detach() - before[k]).abs().max().item() for k, v in loss.named_parameters()}
    assert all(m > 1e-4 for k, m in moved.items() if ".w_" in k), moved
    assert count_parameters(student) == n_student
    assert not any("upsampler" in k for k in student.state_dict())
