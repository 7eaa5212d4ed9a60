"""The contract every distillation loss follows, and the registry that builds them by name.

A loss is an ``nn.Module`` that
  * declares which internals it needs from the student and from the teacher
    (:meth:`student_request`, :meth:`teacher_request`), so the models materialize attention
    maps only for the transformers being distilled;
  * owns whatever it trains (embedding heads, memory banks, projections, up-samplers) as
    submodules or buffers, so the optimizer and the checkpoint see them;
  * maps ``(student_output, teacher_output, batch)`` to a scalar ``L_KD``.

The training loop computes ``alpha * L_c + beta * L_KD`` (paper 002, eq. 1) with no
per-method branches. The teacher is frozen, in eval mode and run without gradients; its
outputs reach the loss detached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mmdistill.data.dataset import Batch
from mmdistill.models.outputs import NOTHING, ModelOutput, Request

LEVELS = ("final", "penultimate", "post_attention", "attention")

# Runs the student and the teacher (no gradients) on one example batch with the given
# requests and returns their outputs; losses use it to size their heads.
Probe = Callable[[Request, Request], tuple[ModelOutput, ModelOutput]]


@dataclass
class DistillContext:
    """What a loss may know about the experiment when it is built."""

    level: str  # one of LEVELS
    pairs: tuple[str, ...]  # distilled transformers, named as in the paper ('V<-A'); same name on both sides
    n_data: int  # size of the training split (memory banks, negatives)
    probe: Probe
    n_classes: int = 7
    # Objects a method may need beyond the outputs, e.g. for saliency or look-ahead weights:
    # "student", "teacher" (modules: keep them out of the loss's own submodules),
    # "train_split", "valid_split" (SplitData), "batch_size", "device".
    extra: dict[str, Any] = field(default_factory=dict)


class DistillLoss(nn.Module):
    """Base class; subclasses set ``name`` and ``levels`` and implement :meth:`forward`."""

    name: ClassVar[str]
    levels: ClassVar[tuple[str, ...]] = LEVELS

    def __init__(self, ctx: DistillContext):
        super().__init__()
        if ctx.level not in self.levels:
            raise ValueError(f"method '{self.name}' does not apply at level '{ctx.level}'; it supports {self.levels}")
        self.level = ctx.level
        self.pairs = tuple(ctx.pairs)

    def student_request(self) -> Request:
        return NOTHING

    def teacher_request(self) -> Request:
        return NOTHING

    def teacher_views(self) -> dict[str, tuple[str, ...]]:
        """Extra teacher passes this loss needs: view name -> modalities kept (the others are
        zeroed). Their logits and penultimate features arrive in ``teacher.views[name]``;
        being outputs of a frozen teacher, they are computed once per data set."""
        return {}

    @property
    def needs_negatives(self) -> int:
        """Number of negative indices per sample this loss wants in each batch (0 for none)."""
        return 0

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def epoch_log(self) -> dict[str, float]:
        """Scalars worth logging once per epoch (e.g. learned weights); empty by default."""
        return {}


LOSSES: dict[str, type[DistillLoss]] = {}


def register(cls: type[DistillLoss]) -> type[DistillLoss]:
    if cls.name in LOSSES:
        raise ValueError(f"distillation method '{cls.name}' registered twice")
    LOSSES[cls.name] = cls
    return cls


def build_loss(method: str, ctx: DistillContext, options: dict[str, Any]) -> DistillLoss:
    """Build the loss registered as ``method`` with its options (the params.yaml entry)."""
    import mmdistill.distill  # noqa: F401  (imports every method module, filling LOSSES)

    if method not in LOSSES:
        raise KeyError(f"unknown distillation method '{method}'; known: {sorted(LOSSES)}")
    return LOSSES[method](ctx, **options)
