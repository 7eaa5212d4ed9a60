"""MSD: saliency and weights, views, gradients (student and heads, never the teacher), the
learning-to-reweight look-ahead against its first-order identity, logging and checkpoints."""

import math

import pytest
import torch

from mmdistill.data.dataset import Batch, SplitData, mask_inputs
from mmdistill.distill import DistillContext, build_loss
from mmdistill.distill.msd import normalize_saliency, population_saliency, true_class_probability
from mmdistill.modalities import FEATURE_DIM
from mmdistill.models import ModelConfig, build_student, build_teacher
from mmdistill.models.outputs import NOTHING, ModelOutput, Request

LENGTHS = {"V": 6, "A": 6, "L": 3}
CFG = ModelConfig.from_dict(
    {"d_model": 8, "n_heads": 2, "n_layers": 1, "relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0}
)


def make_split(name: str, n: int, seed: int) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, LENGTHS[m], FEATURE_DIM[m], generator=g) for m in LENGTHS}
    label = torch.randint(0, 7, (n,), generator=g)
    length = torch.tensor([[LENGTHS[m] for m in "VAL"]] * n, dtype=torch.int32)
    return SplitData(name, inputs, length, label, label.float() - 3, [f"{name}{i}" for i in range(n)])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(one_thread):
    torch.manual_seed(0)
    teacher = build_teacher(CFG, ("V", "A", "L")).eval().requires_grad_(False)
    return teacher, make_split("train", 20, 1), make_split("valid", 10, 2)


def make_student(modality="V"):
    torch.manual_seed(1)
    return build_student(CFG, "language_audio", modality, LENGTHS, "down")


def make_loss(setup, weighting, student=None, **options):
    teacher, train, valid = setup
    student = student or make_student()
    batch = next(train.batches(4))

    def probe(s_req, t_req):
        with torch.no_grad():
            return student(batch.inputs, s_req), teacher(batch.inputs, t_req)

    ctx = DistillContext(
        level="final",
        pairs=(),
        n_data=len(train),
        probe=probe,
        extra={"student": student, "teacher": teacher, "train_split": train, "valid_split": valid, "batch_size": 8},
    )
    return build_loss("msd", ctx, {"weighting": weighting, **options}), student


def teacher_output(teacher, batch, views, grad=False):
    """The teacher's output with its views attached, as the training loop builds it."""
    with torch.set_grad_enabled(grad):
        out = teacher(batch.inputs, NOTHING)
        out.views = {n: teacher(mask_inputs(batch.inputs, keep), NOTHING) for n, keep in views.items()}
    return out


def test_normalize_saliency_golden_values():
    w = normalize_saliency(torch.tensor([[0.2, -0.1, 0.6], [-0.3, 0.0, -0.01]]))
    assert torch.allclose(w, torch.tensor([[0.25, 0.0, 0.75], [1 / 3, 1 / 3, 1 / 3]]))


def test_population_saliency_matches_direct_computation(setup):
    teacher, train, _ = setup
    got = population_saliency(teacher, train, ("V", "A", "L"), batch_size=7)
    with torch.no_grad():
        p = true_class_probability(teacher(train.inputs, NOTHING).logits, train.label)
        want = [
            (
                p
                - true_class_probability(
                    teacher({**train.inputs, m: torch.zeros_like(train.inputs[m])}, NOTHING).logits, train.label
                )
            ).mean()
            for m in "VAL"
        ]
    assert torch.allclose(got, torch.stack(want), atol=1e-6)


@pytest.mark.parametrize("weighting", ["population", "instance", "meta", "uniform"])
def test_finite_gradients_reach_student_and_heads_never_teacher(setup, weighting):
    teacher, train, _ = setup
    loss, student = make_loss(setup, weighting)
    teacher.requires_grad_(True)  # so that a leak into the teacher would show up as a gradient
    try:
        batch = next(train.batches(8))
        t_out = teacher_output(teacher, batch, loss.teacher_views(), grad=True)
        v = loss(student(batch.inputs, NOTHING), t_out, batch)
        assert v.dim() == 0 and torch.isfinite(v) and v.item() > 0
        v.backward()
        assert all(p.grad is None for p in teacher.parameters())
    finally:
        teacher.requires_grad_(False)
    assert student.convs["V"].weight.grad.abs().sum() > 0
    assert set(loss.heads) == {"A", "L"}
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in loss.heads.values())
    # the loss owns its heads only: the student is not a submodule, its weights are not checkpointed
    assert {n.split(".")[0] for n, _ in loss.named_parameters()} == {"heads"}
    assert not any(k.startswith("_student") for k in loss.state_dict())


def test_views_requested_per_weighting(setup):
    keep_only = {"V": ("V",), "A": ("A",), "L": ("L",)}
    assert make_loss(setup, "population")[0].teacher_views() == keep_only
    inst = make_loss(setup, "instance")[0].teacher_views()
    assert inst == {**keep_only, "no_V": ("A", "L"), "no_A": ("V", "L"), "no_L": ("V", "A")}
    assert make_loss(setup, "uniform", modalities=["L", "A"])[0].teacher_views() == {"A": ("A",), "L": ("L",)}


def test_population_weights_normalize_and_are_checkpointed(setup):
    loss, _ = make_loss(setup, "population")
    assert torch.all(loss.weights >= 0) and math.isclose(loss.weights.sum().item(), 1.0, rel_tol=1e-6)
    assert torch.allclose(loss.weights, normalize_saliency(loss.saliency))
    assert {"weights", "saliency"} <= set(loss.state_dict())


def test_instance_weights_are_per_sample_normalized_saliency(setup):
    loss, _ = make_loss(setup, "instance")
    label = torch.tensor([0, 1])
    full = torch.tensor([[2.0, 0.0], [0.0, 2.0]]).repeat(1, 4)[:, :7]  # true class likely for both
    z = lambda rows: ModelOutput(torch.tensor(rows).repeat(1, 4)[:, :7], torch.zeros(2, 4))  # noqa: E731
    t = ModelOutput(full, torch.zeros(2, 4))
    # sample 0: removing V hurts, A does not, L hurts more; sample 1: nothing hurts -> uniform
    t.views = {
        "no_V": z([[1.0, 0.0], [0.0, 3.0]]),
        "no_A": z([[2.0, 0.0], [0.0, 2.5]]),
        "no_L": z([[0.0, 0.0], [0.0, 2.0]]),
    }
    w = loss.instance_weights(t, label)
    p = lambda logits: true_class_probability(logits, label)  # noqa: E731
    s0 = torch.stack([p(full) - p(t.views[f"no_{m}"].logits) for m in "VAL"], 1)[0]
    assert torch.allclose(w[0], s0.clamp(min=0) / s0.clamp(min=0).sum())
    assert w[0, 1] == 0 and w[0, 2] > w[0, 0] > 0
    assert torch.allclose(w[1], torch.full((3,), 1 / 3))


def test_meta_update_matches_first_order_identity(setup):
    """At eps = 0 the look-ahead gradient is -<grad L_val, grad KD_m>: check the weights it gives."""
    teacher, train, valid = setup
    loss, student = make_loss(setup, "meta", meta_momentum=0.0)
    batch = next(train.batches(8))
    t_out = teacher_output(teacher, batch, loss.teacher_views())
    torch.manual_seed(5)
    loss.meta_update(t_out, batch)
    got = loss.weights.clone()

    params = [p for p in student.parameters()]
    torch.manual_seed(5)
    idx = torch.randperm(len(valid))[:8]
    student.eval()
    val = torch.nn.functional.cross_entropy(student({"V": valid.inputs["V"][idx]}, NOTHING).logits, valid.label[idx])
    g_val = torch.autograd.grad(val, params)
    student.train()
    out = student(batch.inputs, Request(attention=frozenset(student.transformer_names)))
    terms = loss.aux_terms(out, t_out).mean(0)
    align = []
    for m in range(3):
        g_m = torch.autograd.grad(terms[m], params, retain_graph=True, allow_unused=True)
        align.append(sum((a * b).sum() for a, b in zip(g_val, g_m) if b is not None))
    step = torch.stack(align).clamp(min=0)  # -g_eps = +<grad L_val, grad KD_m>
    assert step.sum() > 0, "degenerate case: no term helps; change the seeds of this test"
    assert torch.allclose(got, step / step.sum(), atol=1e-4)
    assert math.isclose(got.sum().item(), 1.0, rel_tol=1e-6)


def test_meta_weights_move_with_momentum_and_every(setup):
    teacher, train, _ = setup
    loss, student = make_loss(setup, "meta", meta_every=2, meta_momentum=0.5)
    seen = []
    for batch in list(train.batches(5))[:4]:
        t_out = teacher_output(teacher, batch, loss.teacher_views())
        loss(student(batch.inputs, NOTHING), t_out, batch).backward()
        seen.append(loss.weights.clone())
        assert math.isclose(loss.weights.sum().item(), 1.0, rel_tol=1e-5) and (loss.weights >= 0).all()
    assert not torch.allclose(seen[0], torch.full((3,), 1 / 3))  # step 0 updated
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[2], seen[3])  # steps 1, 3 did not
    assert loss.meta_step == 4
    state = loss.state_dict()
    fresh, _ = make_loss(setup, "meta", meta_every=2, meta_momentum=0.5)
    fresh.load_state_dict(state)
    assert fresh.meta_step == 4 and torch.equal(fresh.weights, loss.weights)
    # eval mode: no look-ahead, weights unchanged
    loss.eval()
    batch = next(train.batches(5))
    loss(student(batch.inputs, NOTHING), teacher_output(teacher, batch, loss.teacher_views()), batch)
    assert loss.meta_step == 4 and torch.equal(loss.weights, seen[-1])


def test_epoch_log_reports_mean_weights_and_terms(setup):
    teacher, train, _ = setup
    loss, student = make_loss(setup, "instance")
    for batch in train.batches(8):
        t_out = teacher_output(teacher, batch, loss.teacher_views())
        loss(student(batch.inputs, NOTHING), t_out, batch)
    logged = loss.epoch_log()
    assert set(logged) == {f"{k}_{m}" for k in ("w", "term") for m in "VAL"}
    assert math.isclose(sum(logged[f"w_{m}"] for m in "VAL"), 1.0, rel_tol=1e-5)
    assert all(logged[f"term_{m}"] >= 0 for m in "VAL")
    assert loss.epoch_log() == {}  # reset after each call


def test_own_modality_uses_student_logits_for_an_audio_student(setup):
    teacher, train, _ = setup
    loss, student = make_loss(setup, "uniform", student=make_student("A"))
    assert loss.student_modality == "A" and set(loss.heads) == {"V", "L"}
    s = student(next(train.batches(4)).inputs, NOTHING)
    assert torch.equal(loss.student_view(s, "A"), s.logits)


def test_contract_and_options(setup):
    loss, _ = make_loss(setup, "uniform")
    assert loss.name == "msd" and loss.student_request() == NOTHING and loss.teacher_request() == NOTHING
    assert loss.needs_negatives == 0
    with pytest.raises(ValueError, match="weighting"):
        make_loss(setup, "learned")
    with pytest.raises(ValueError, match="modalities"):
        make_loss(setup, "uniform", modalities=["X"])
    with pytest.raises(ValueError, match="meta_momentum"):
        make_loss(setup, "meta", meta_momentum=1.0)
    ctx = DistillContext(level="final", pairs=(), n_data=4, probe=lambda s, t: None, extra={})
    with pytest.raises(ValueError, match=r"ctx.extra\['student'\]"):
        build_loss("msd", ctx, {})
    ctx.level = "attention"
    with pytest.raises(ValueError, match="final"):
        build_loss("msd", ctx, {})
    batch = Batch({}, torch.zeros(2, dtype=torch.long), torch.zeros(2), torch.arange(2))
    s = ModelOutput(torch.zeros(2, 7), torch.zeros(2, CFG.d_model * 3))
    with pytest.raises(KeyError, match="views"):
        loss(s, ModelOutput(torch.zeros(2, 7), torch.zeros(2, 4)), batch)
