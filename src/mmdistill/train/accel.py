"""``train.compile``: the model's forward pass through ``torch.compile``, with a fallback.

At the paper's sizes (d 33, 3 heads) a training step is a few thousand small kernels; on a
large GPU the step can be bound by their launches rather than by arithmetic.
``torch.compile`` fuses element-wise kernels (Inductor) and, in mode ``reduce-overhead``,
replays the step's kernels as CUDA graphs, which removes most of the per-kernel launch cost.

Modes (``train.compile``): ``none`` (eager, the default), ``default``, ``reduce-overhead``,
``max-autotune`` -- the modes of ``torch.compile``. Only the model's ``forward`` is compiled
(the instance attribute shadows the class's method), so parameter names, state dicts and
checkpoints are those of the eager model. If compilation fails on the first call (no C++
compiler, an unsupported operation, an old Triton), the failure is logged as a warning
naming the mode and the error and the model runs eagerly from then on; any later error is
raised as usual.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def compile_model(model: nn.Module, mode: str, backend: str = "inductor") -> nn.Module:
    """Compile ``model.forward`` in place (see the module docstring); returns ``model``."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile must be one of {COMPILE_MODES}, got {mode!r}")
    uncompile_model(model)  # compiling twice wraps the eager forward, not the previous wrapper
    if mode == "none":
        return model
    eager = model.forward
    compiled = torch.compile(eager, mode=mode, backend=backend)
    state: dict[str, Any] = {"fn": None}

    def forward(*args: Any, **kwargs: Any):
        if state["fn"] is not None:
            return state["fn"](*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:  # compilation failed on the first call: run eagerly from now on
            log.warning(
                "torch.compile (mode %s, backend %s) failed, the model runs eagerly: %s: %s",
                mode,
                backend,
                type(exc).__name__,
                " ".join(str(exc).split())[:600],  # the cause, on one line
            )
            state["fn"] = eager
            return eager(*args, **kwargs)
        state["fn"] = compiled
        return out

    model.forward = forward
    model.compile_state = state  # for callers and tests: state["fn"] is eager after a fallback
    return model


def uncompile_model(model: nn.Module) -> nn.Module:
    """Undo :func:`compile_model` (the class's eager ``forward`` again)."""
    model.__dict__.pop("forward", None)
    model.__dict__.pop("compile_state", None)
    return model
