"""Teacher, student and transformer blocks on tiny sizes (d=8, 2 heads, 2 layers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdistill.models import (
    CONFIGURATIONS,
    PAPER_PRESET,
    ModelConfig,
    MulTTeacher,
    Request,
    UnimodalStudent,
    build_student,
    build_teacher,
    count_parameters,
)
from mmdistill.models import transformer as tr
from mmdistill.models.teacher import teacher_transformer_names

LENGTHS = {"V": 12, "A": 12, "L": 6}
DIMS = {"V": 35, "A": 74, "L": 300}
B = 3


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=8, n_heads=2, n_layers=2)
    base.update(kw)
    return ModelConfig(**base)


def inputs(lengths=LENGTHS, batch=B, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, t, DIMS[m], generator=g) for m, t in lengths.items()}


def everything(names) -> Request:
    f = frozenset(names)
    return Request(attention=f, maps=f, post_attention=f)


# ------------------------------------------------------------------ config
def test_config_from_dict_rejects_unknown_and_bad_values():
    assert ModelConfig.from_dict({"d_model": 16, "n_heads": 4}).d_model == 16
    with pytest.raises(ValueError, match="unknown ModelConfig keys \\['width'\\]"):
        ModelConfig.from_dict({"width": 16})
    with pytest.raises(ValueError, match="does not divide"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="conv_kernel"):
        ModelConfig(conv_kernel=2)
    with pytest.raises(ValueError, match="res_dropout"):
        ModelConfig(res_dropout=1.0)


def test_parameter_counts_match_mult_and_paper_preset():
    # MulT reference, d=30, 5 levels, kernel-1 projections, 7 outputs: 1,074,817 parameters.
    assert count_parameters(build_teacher(ModelConfig(conv_kernel=1), ("V", "A", "L"))) == 1_074_817
    paper = ModelConfig.from_dict(PAPER_PRESET)
    n = count_parameters(build_teacher(paper, ("V", "A", "L")))
    assert abs(n / 1.802e6 - 1) < 0.002, n


# ------------------------------------------------------------------ attention
def test_sinusoidal_positions_formula_and_odd_width():
    t = tr.sinusoidal_positions(5, 7, torch.device("cpu"), torch.float32)
    assert t.shape == (5, 7) and t.is_contiguous()
    assert torch.all(t[:, -1] == 0)  # odd width: zero last channel
    # position 1, channel 0: sin(1 * 10000^0) = sin(1); channel 3 (first cos): cos(1)
    assert t[0, 0].item() == pytest.approx(math.sin(1.0))
    assert t[0, 3].item() == pytest.approx(math.cos(1.0))
    w2 = 10000 ** (-2 / 2)  # channel 2 of 3 sin channels
    assert t[4, 2].item() == pytest.approx(math.sin(5 * w2), abs=1e-6)


def test_fused_attention_and_scores_agree_with_explicit_attention():
    torch.manual_seed(0)
    mha = tr.MultiHeadAttention(8, 2, dropout=0.0)
    xq, xkv = torch.randn(B, 5, 8), torch.randn(B, 7, 8)
    fused, none, no_maps, no_heads = mha(xq, xkv, want_scores=False)
    with_scores, scores, maps, _ = mha(xq, xkv, want_scores=True, want_maps=True)
    assert no_heads is None
    assert none is None and no_maps is None and scores.shape == maps.shape == (B, 2, 5, 7)
    torch.testing.assert_close(fused, with_scores)
    torch.testing.assert_close(maps, scores.softmax(-1))
    # the explicit softmax(scores) V, projected, is the fused output
    v = mha.kv_proj(xkv)[..., 8:].reshape(B, 7, 2, 4).transpose(1, 2)
    explicit = mha.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, 5, 8))
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)
    # a loss on the scores reaches the query and key projections
    scores.square().sum().backward()
    assert mha.q_proj.weight.grad.abs().sum() > 0 and mha.kv_proj.weight.grad[:8].abs().sum() > 0
    # the whole encoder too, cross-modal and self-attention
    enc = tr.TransformerEncoder(8, tiny(attn_dropout=0.0)).eval()
    for kv in (xkv, None):
        a, s_none, m_none, _ = enc(xq, kv)
        b, s, m, _ = enc(xq, kv, want_scores=True, want_maps=True)
        assert s_none is None and m_none is None and len(s) == len(m) == 2
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        c, s_none, m, _ = enc(xq, kv, want_maps=True)  # maps alone
        assert s_none is None and len(m) == 2
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("explicit", [False, True])
def test_post_attention_is_eq4_before_out_proj_by_default(explicit):
    """Paper 002, eqs. 3-4: DisLvl = softmax(Q K^T / sqrt(d_k)) V, heads concatenated, before the
    output projection; ``post_projection`` gives the module's output after out_proj instead."""
    torch.manual_seed(3)
    enc = tr.TransformerEncoder(8, tiny(attn_dropout=0.0, n_layers=1)).eval()
    xq, xkv = torch.randn(B, 5, 8), torch.randn(B, 7, 8)
    mha, layer = enc.layers[0].attn, enc.layers[0]
    q_in = layer.ln_attn(enc._embed(xq))
    kv_in = layer.ln_attn(enc._embed(xkv))
    q = mha.q_proj(q_in).reshape(B, 5, 2, 4).transpose(1, 2)
    k, v = (t.reshape(B, 7, 2, 4).transpose(1, 2) for t in mha.kv_proj(kv_in).chunk(2, dim=-1))
    eq4 = ((q @ k.transpose(-1, -2) / 2.0).softmax(-1) @ v).transpose(1, 2).reshape(B, 5, 8)  # sqrt(d_k) = 2
    _, _, _, post = enc(xq, xkv, want_post=True, want_scores=explicit)
    torch.testing.assert_close(post[0], eq4, atol=1e-6, rtol=1e-5)
    _, _, _, projected = enc(xq, xkv, want_post=True, want_scores=explicit, post_projection=True)
    torch.testing.assert_close(projected[0], mha.out_proj(eq4), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(projected[0], post[0])
    # the model output does not depend on which one is handed out
    out_a = enc(xq, xkv, want_post=True)[0]
    out_b = enc(xq, xkv, want_post=True, post_projection=True)[0]
    torch.testing.assert_close(out_a, out_b)


def test_post_attention_request_reaches_the_layers():
    cfg = tiny(attn_dropout=0.0)
    torch.manual_seed(0)
    t = build_teacher(cfg, ("V", "A", "L")).eval()
    x = inputs()
    pair = frozenset(["V<-A"])
    eq4 = t(x, Request(post_attention=pair)).post_attention["V<-A"]
    proj = t(x, Request(post_attention=pair, post_projection=True)).post_attention["V<-A"]
    out_proj = t.stack.encoders["V<-A"].layers[0].attn.out_proj
    torch.testing.assert_close(proj[0], out_proj(eq4[0]), atol=1e-6, rtol=1e-5)


def test_scores_are_prescaled_qk_and_rows_softmax_to_one():
    torch.manual_seed(1)
    mha = tr.MultiHeadAttention(8, 2, dropout=0.0)
    xq, xkv = torch.randn(2, 4, 8), torch.randn(2, 6, 8)
    _, scores, maps, _ = mha(xq, xkv, want_scores=True, want_maps=True)
    q = mha.q_proj(xq).reshape(2, 4, 2, 4).transpose(1, 2)
    k = mha.kv_proj(xkv)[..., :8].reshape(2, 6, 2, 4).transpose(1, 2)
    torch.testing.assert_close(scores, q @ k.transpose(-1, -2) / 2.0)  # sqrt(d_k) = sqrt(4)
    # the layer's own maps: rows of non-negative weights summing to one, softmax of its scores
    assert maps.shape == (2, 2, 4, 6) and (maps >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 4))
    torch.testing.assert_close(maps, scores.softmax(-1))


def test_scores_only_when_requested(monkeypatch):
    calls = {"scores": 0}
    original = tr.attention_scores

    def counting(*args, **kw):
        calls["scores"] += 1
        return original(*args, **kw)

    monkeypatch.setattr(tr, "attention_scores", counting)
    cfg = tiny()
    teacher = build_teacher(cfg, ("V", "A", "L")).eval()
    student = build_student(cfg, "language_audio", "V", LENGTHS, "down").eval()
    x = inputs()
    for model in (teacher, student):
        out = model(x)
        assert out.attention == {} and out.maps == {} and out.post_attention == {}
    assert calls["scores"] == 0
    # post-attention alone does not need the map either
    out = teacher(x, Request(post_attention=frozenset({"V<-A"})))
    assert calls["scores"] == 0 and list(out.post_attention) == ["V<-A"] and out.attention == {}
    out = teacher(x, Request(attention=frozenset({"V<-A"})))
    assert calls["scores"] == cfg.n_layers  # one per layer of the one requested transformer
    out = teacher(x, Request(attention=frozenset({"V<-A"}), maps=frozenset({"V<-A", "V<-L"})))
    assert calls["scores"] == 3 * cfg.n_layers  # 2 more transformers; scores and maps of a layer: one product
    assert list(out.attention) == ["V<-A"] and sorted(out.maps) == ["V<-A", "V<-L"]
    torch.testing.assert_close(out.maps["V<-A"][0], out.attention["V<-A"][0].softmax(-1))


# ------------------------------------------------------------------ teacher
@pytest.mark.parametrize("branches", [("V", "A", "L"), ("V",), ("A",), ("L",), ("L", "V")])
def test_teacher_shapes(branches):
    cfg = tiny()
    teacher = build_teacher(cfg, branches).eval()
    names = teacher.transformer_names
    assert names == teacher_transformer_names(branches) and len(names) == 3 * len(branches)
    assert teacher.input_modalities == ("V", "A", "L")
    out = teacher(inputs(), everything(names))
    assert out.logits.shape == (B, 7)
    assert out.penultimate.shape == (B, 2 * cfg.d_model * len(branches))
    for name in names:
        kv, q = (name[0], name[0]) if name.endswith("*") else (name[0], name[-1])
        width = 2 * cfg.d_model if name.endswith("*") else cfg.d_model
        assert len(out.attention[name]) == cfg.n_layers
        for s, p in zip(out.attention[name], out.post_attention[name]):
            assert s.shape == (B, cfg.n_heads, LENGTHS[q], LENGTHS[kv])
            assert p.shape == (B, LENGTHS[q], width)
        for s, m in zip(out.attention[name], out.maps[name]):  # the teacher's own maps
            assert m.shape == s.shape and (m >= 0).all()
            torch.testing.assert_close(m.sum(-1), torch.ones(B, cfg.n_heads, LENGTHS[q]))
            torch.testing.assert_close(m, s.softmax(-1))


def test_video_branch_names_and_branch_order_does_not_matter():
    cfg = tiny()
    assert build_teacher(cfg, ("V",)).transformer_names == ("A<-V", "L<-V", "V*")
    torch.manual_seed(3)
    a = build_teacher(cfg, ("A", "V")).eval()
    b = build_teacher(cfg, ("V", "A")).eval()
    b.load_state_dict(a.state_dict())
    x = inputs()
    torch.testing.assert_close(a(x).logits, b(x).logits)
    with pytest.raises(ValueError, match="subset"):
        build_teacher(cfg, ("V", "X"))


def test_teacher_rejects_unknown_request_and_bad_inputs():
    teacher = build_teacher(tiny(), ("V",))
    with pytest.raises(KeyError, match="V<-A"):
        teacher(inputs(), Request(attention=frozenset({"V<-A"})))
    x = inputs()
    x["A"] = x["A"][..., :70]
    with pytest.raises(ValueError, match="input 'A'"):
        teacher(x)
    with pytest.raises(KeyError, match="'L'"):
        teacher({m: v for m, v in inputs().items() if m != "L"})


# ------------------------------------------------------------------ student
@pytest.mark.parametrize("key", sorted(CONFIGURATIONS))
def test_student_shapes_every_configuration(key):
    cfg = tiny()
    conf = CONFIGURATIONS[key]
    student = build_student(cfg, key, "V", LENGTHS, "down").eval()
    assert student.transformer_names == conf.student_transformers
    out = student(inputs(), everything(conf.distilled_pairs))
    width = 6 * cfg.d_model if conf.n_transformers == 9 else 3 * cfg.d_model
    assert out.logits.shape == (B, 7) and out.penultimate.shape == (B, width)
    assert set(out.attention) == set(conf.distilled_pairs) == set(out.post_attention)


@pytest.mark.parametrize("key", sorted(CONFIGURATIONS))
def test_distilled_maps_match_teacher_shapes_with_down_proxies(key):
    """EDAM-S: with down-sampled proxies each student map has its teacher map's shape."""
    lengths = {"V": 12, "A": 8, "L": 6}
    cfg = tiny()
    conf = CONFIGURATIONS[key]
    req = Request(frozenset(conf.distilled_pairs))
    x = inputs(lengths)
    t = build_teacher(cfg, conf.teacher_branches_needed).eval()(x, req)
    down = build_student(cfg, key, "V", lengths, "down").eval()(x, req)
    full = build_student(cfg, key, "V", lengths, "full").eval()(x, req)
    for name in conf.distilled_pairs:
        assert down.attention[name][0].shape == t.attention[name][0].shape, name
        assert down.post_attention == {}
    # 'V<-A' (query A, keys V): teacher (8, 12); full-length student (12, 12)
    if "V<-A" in conf.distilled_pairs:
        assert full.attention["V<-A"][0].shape[-2:] == (12, 12) != t.attention["V<-A"][0].shape[-2:]


def test_proxy_lengths_at_mosei_ratio():
    """Video 500 -> language 50: stride 10, last 50 steps; 50 -> 500 by transposed conv."""
    cfg = tiny()
    mosei = {"V": 500, "A": 500, "L": 50}
    s = build_student(cfg, "language_audio", "V", mosei, "down")
    streams = s.streams(torch.randn(1, 500, 35))
    assert {m: v.shape[1] for m, v in streams.items()} == mosei
    assert s.convs["L"].stride == 10 and s.convs["L"].conv.kernel_size == (12,)
    s = build_student(cfg, "language_audio", "L", mosei, "down")
    streams = s.streams(torch.randn(1, 50, 300))
    assert {m: v.shape[1] for m, v in streams.items()} == mosei
    with pytest.raises(ValueError, match="length 50"):
        s.streams(torch.randn(1, 40, 300))


@pytest.mark.parametrize("modality", ["A", "L"])
@pytest.mark.parametrize("proxy", ["down", "full"])
def test_audio_and_language_students_run(modality, proxy):
    cfg = tiny()
    student = build_student(cfg, "language_audio", modality, LENGTHS, proxy)
    assert student.input_modalities == (modality,)
    x = inputs()
    out = student(x, Request(frozenset({"V<-A", "V<-L"})))
    assert out.logits.shape == (B, 7) and torch.isfinite(out.logits).all()
    expect_q = LENGTHS["A"] if proxy == "down" else LENGTHS[modality]
    assert out.attention["V<-A"][0].shape[-2] == expect_q
    # the student reads only its own modality
    only = {modality: x[modality]}
    student.eval()
    torch.testing.assert_close(student(only).logits, student(x).logits)


def test_student_needs_target_lengths_for_down_and_known_configuration():
    with pytest.raises(ValueError, match="target_lengths"):
        UnimodalStudent(tiny(), ("V<-V", "A<-V", "L<-V"), "V", None, "down")
    with pytest.raises(KeyError, match="unknown student-teacher configuration"):
        build_student(tiny(), "bimodal", "V", LENGTHS, "down")
    with pytest.raises(ValueError, match="needs the cross-modal transformers"):
        UnimodalStudent(tiny(), ("V<-V", "V*"), "V", LENGTHS, "down")


def test_eval_forward_is_deterministic_and_train_forward_is_not():
    torch.manual_seed(0)
    student = build_student(tiny(), "language_audio", "V", LENGTHS, "down")
    x = inputs()
    student.eval()
    torch.testing.assert_close(student(x).logits, student(x).logits, rtol=0, atol=0)
    student.train()
    assert not torch.equal(student(x).logits, student(x).logits)  # dropout is active in training


@pytest.mark.parametrize("key", ["language_audio", "complete"])
def test_gradients_reach_every_student_parameter(key):
    torch.manual_seed(0)
    student = build_student(tiny(), key, "V", LENGTHS, "down").train()
    out = student(inputs(), everything(CONFIGURATIONS[key].distilled_pairs))
    F.cross_entropy(out.logits, torch.tensor([0, 3, 6])).backward()
    dead = [n for n, p in student.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


def _tensors(out) -> list[torch.Tensor]:
    found = [out.logits, out.penultimate]
    for field in (out.attention, out.maps, out.post_attention):
        found += [t for layers in field.values() for t in layers]
    return found


@pytest.mark.parametrize(
    "device",
    ["cpu", "meta", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_teacher_and_student_follow_the_input_device_and_dtype(device, dtype):
    """Every output of both models is on the inputs' device and of their dtype: no tensor is
    made on the default device inside. On a machine without an accelerator the ``meta``
    device stands in for another device: mixing it with a CPU tensor is an error."""
    cfg = tiny()
    x = {m: v.to(device=device, dtype=dtype) for m, v in inputs().items()}
    for model, names in (
        (build_teacher(cfg, ("V", "A", "L")), ("A<-V", "V*")),
        (build_student(cfg, "language_audio", "V", LENGTHS, "down"), ("V<-A", "V<-L")),
        (build_student(cfg, "language_audio", "V", LENGTHS, "full"), ("V<-A",)),
    ):
        model = model.to(device=device, dtype=dtype).eval()
        out = model(x, everything(names))
        tensors = _tensors(out)
        assert len(tensors) == 2 + 3 * len(names) * cfg.n_layers
        for t in tensors:
            assert t.device.type == device and t.dtype == dtype, (type(model).__name__, t.device, t.dtype)
        assert out.logits.shape == (B, 7)


def test_configurations_as_in_paper():
    assert [c.number for c in CONFIGURATIONS.values()] == [1, 2, 3, 4, 5]
    c5 = CONFIGURATIONS["language_audio"]
    assert c5.student_transformers == ("V<-V", "V<-L", "V<-A")
    assert set(c5.distilled_pairs) == {"V<-A", "V<-L"}
    assert len(CONFIGURATIONS["complete"].distilled_pairs) == 9
    assert CONFIGURATIONS["video"].teacher_branches_needed == ("V",)
    for c in CONFIGURATIONS.values():
        teacher_names = set(MulTTeacher(tiny(), c.teacher_branches_needed).transformer_names)
        assert set(c.distilled_pairs) <= teacher_names


def test_internals_only_runs_just_the_requested_transformers():
    from mmdistill.models import ModelConfig, build_teacher
    from mmdistill.models.outputs import Request

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 2})
    teacher = build_teacher(cfg, ("V", "A", "L")).eval()
    g = torch.Generator().manual_seed(1)
    inputs = {
        "V": torch.randn(2, 12, 35, generator=g),
        "A": torch.randn(2, 12, 74, generator=g),
        "L": torch.randn(2, 6, 300, generator=g),
    }
    full = teacher(inputs, Request(attention=frozenset({"V<-A", "V*"})))
    calls = []
    hooks = [
        enc.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, enc in teacher.stack.encoders.items()
    ]
    part = teacher(inputs, Request(attention=frozenset({"V<-A", "V*"}), internals_only=True))
    for h in hooks:
        h.remove()
    assert part.logits is None and part.penultimate is None
    assert sorted(calls) == sorted(["V<-A", "A<-V", "L<-V", "V*"])  # V* reads A<-V and L<-V
    for name in ("V<-A", "V*"):
        for a, b in zip(full.attention[name], part.attention[name]):
            assert torch.equal(a, b)
