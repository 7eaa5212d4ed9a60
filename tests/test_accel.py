"""train.compile: torch.compile of the model's forward, its fallback, and its wiring in the loop.

On the CPU the tests compile with Dynamo's ``eager`` backend (graph capture without code
generation): Inductor's C++ code generation takes minutes for the tiny student on a loaded
2-core machine, and what is tested here -- capture, same numbers, state dict unchanged,
fallback -- does not depend on the backend. Models are built without dropout so that the
CPU dropout's in-place ``random_`` (not capturable by Dynamo) does not break the graph.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from mmdistill.models import ModelConfig, build_student
from mmdistill.models.outputs import NOTHING, Request
from mmdistill.train import accel, loop
from mmdistill.train.accel import compile_model, uncompile_model
from tests.test_train import CFG, LENGTHS, make_split

pytestmark = pytest.mark.usefixtures("one_thread")

NO_DROPOUT = {"relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0, "attn_dropout": 0.0}


def model_without_dropout():
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 1, **NO_DROPOUT})
    return build_student(cfg, "language_audio", "V", LENGTHS, "down")


def forward_backward(model, batch, request=NOTHING):
    model.zero_grad(set_to_none=True)
    out = model(batch.inputs, request)
    (out.logits.square().sum() + sum(m.sum() for layers in out.maps.values() for m in layers)).backward()
    return out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_compiled_forward_captures_a_graph_and_gives_the_eager_numbers():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    batch = next(make_split("train", 8, 1).batches(8))
    eager, compiled = model_without_dropout(), model_without_dropout()
    keys = list(compiled.state_dict())
    compile_model(compiled, "default", backend="eager")
    request = Request(maps=frozenset({"V<-A"}))
    for req in (NOTHING, request):
        ref_logits, ref_grads = forward_backward(eager, batch, req)
        logits, grads = forward_backward(compiled, batch, req)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-6)
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] >= 1  # Dynamo captured the forward
    assert compiled.compile_state["fn"] is not compiled.__class__.forward
    assert list(compiled.state_dict()) == keys  # no '_orig_mod.' prefix: checkpoints unchanged
    compile_model(compiled, "none")  # back to eager
    assert "forward" not in compiled.__dict__ and "compile_state" not in compiled.__dict__
    uncompile_model(compiled)
    assert "forward" not in compiled.__dict__


def test_failing_compilation_falls_back_to_eager_with_a_warning(caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    batch = next(make_split("train", 8, 1).batches(8))
    eager, model = model_without_dropout(), model_without_dropout()
    compile_model(model, "default", backend=broken_backend)
    compile_model(model, "default", backend=broken_backend)  # again: wraps the eager forward, not the wrapper
    with caplog.at_level(logging.WARNING, logger=accel.__name__):
        logits, _ = forward_backward(model, batch)
    assert "torch.compile (mode default" in caplog.text and "no compiler here" in caplog.text
    assert caplog.text.count("no compiler here") == 1  # one wrapper, one failed compilation
    torch.testing.assert_close(logits, forward_backward(eager, batch)[0], rtol=0, atol=0)
    assert model.compile_state["fn"] == model.__class__.forward.__get__(model)  # eager from now on


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="train.compile must be one of"):
        compile_model(model_without_dropout(), "fastest")


def test_training_loop_compiles_the_model_when_asked(tmp_path, monkeypatch):
    """train.compile reaches compile_model; the run trains and matches the eager run."""
    seen = []

    def eager_backend_compile(model, mode):
        seen.append(mode)
        return compile_model(model, mode, backend="eager") if mode != "none" else model

    monkeypatch.setattr(loop, "compile_model", eager_backend_compile)
    results = {}
    for mode in ("none", "default"):
        model = model_without_dropout()
        res = loop.train(
            model,
            make_split("train", 32, 1),
            make_split("valid", 16, 2),
            replace(CFG, epochs=2, compile=mode),
            seed=3,
            run_label=mode,
            resume_path=tmp_path / f"{mode}.pt",
            config_hash=mode,
            progress=False,
        )
        results[mode] = [h["train_loss"] for h in res.history]
    assert seen == ["none", "default"]
    assert results["default"] == pytest.approx(results["none"], rel=1e-5)
