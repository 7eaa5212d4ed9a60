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

Every method declares the options it takes from params.yaml in one place, its class's
``OPTIONS`` (name -> :class:`Option`: type, default, range, allowed values), plus
:meth:`DistillLoss.check_options` for rules that involve several options or the attention-map
sizes. The registry checks every student's options against them before any job runs
(``python -m mmdistill validate``, ``snakemake -n``), so a typo'd name or a value out of range
is reported at once, naming its key, not when the job starts after its teacher has trained.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mmdistill.data.dataset import Batch
from mmdistill.models.outputs import NOTHING, ModelOutput, Request
from mmdistill.registry import string_number_hint

LEVELS = ("final", "penultimate", "post_attention", "attention")

# Runs the student and the teacher (no gradients) on one example batch with the given
# requests and returns their outputs; losses use it to size their heads.
Probe = Callable[[Request, Request], tuple[ModelOutput, ModelOutput]]

# Attention-map sizes of the distilled transformers, known before any model is built:
# pair name -> ((Tq, Tk) of the student's map, (Tq, Tk) of the teacher's map).
MapShapes = dict[str, tuple[tuple[int, int], tuple[int, int]]]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


@dataclass(frozen=True)
class Option:
    """One option of a method: its type, default and allowed values.

    ``minimum`` / ``maximum`` are inclusive bounds, ``above`` / ``below`` exclusive ones;
    ``choices`` are the allowed values (for a list: the allowed items, each at most once);
    ``nullable`` lets the option be ``null`` (None). A float option takes integers too.
    """

    type: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if value is None:
            return None if self.nullable else f"must be {_TYPE_NAMES[self.type]}, got null"
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            got = f"{value!r} ({type(value).__name__})"
            hint = string_number_hint(value) if self.type in (int, float) else ""
            return f"must be {_TYPE_NAMES[self.type]}{' or null' if self.nullable else ''}, got {got}{hint}"
        if self.type is list:
            bad = [v for v in value if self.choices is not None and v not in self.choices]
            if bad or not value or len(set(value)) != len(value):
                return f"must be a non-empty list of distinct items of {list(self.choices or ())}, got {value!r}"
            return None
        if self.choices is not None and value not in self.choices:
            return f"must be one of {list(self.choices)}, got {value!r}"
        bounds = [
            (self.minimum, lambda v, b: v >= b, ">="),
            (self.maximum, lambda v, b: v <= b, "<="),
            (self.above, lambda v, b: v > b, ">"),
            (self.below, lambda v, b: v < b, "<"),
        ]
        for bound, holds, sign in bounds:
            if bound is not None and not holds(value, bound):
                return f"must be {sign} {bound}, got {value!r}"
        return None


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
    # the options this method takes from params.yaml (keyword arguments of __init__)
    OPTIONS: ClassVar[dict[str, Option]] = {}

    @classmethod
    def check_options(cls, options: dict[str, Any], level: str, shapes: MapShapes) -> list[str]:
        """Problems of ``options`` (complete: defaults filled in, each one of the right type)
        that involve several options, the ``level`` or the attention-map sizes ``shapes`` of
        the distilled pairs; ``'option: why'`` each. None by default."""
        return []

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


def option_problems(method: str, options: dict[str, Any], level: str | None, shapes: MapShapes | None) -> list[str]:
    """Everything wrong with a method's options, as ``'option: why'`` lines (empty when fine):
    unknown names, types, ranges and allowed values (the method's ``OPTIONS``), then, when
    those pass and ``shapes`` is given, the method's own :meth:`DistillLoss.check_options`."""
    import mmdistill.distill  # noqa: F401  (imports every method module, filling LOSSES)

    if method == "none":
        return [f"{k}: method 'none' takes no options" for k in options]
    declared = LOSSES[method].OPTIONS
    problems = []
    for key, value in options.items():
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{key}: '{method}' has no option '{key}'{hint}; its options: {sorted(declared)}")
        elif (why := declared[key].problem(value)) is not None:
            problems.append(f"{key}: {why}")
    if problems or shapes is None or level is None:
        return problems
    full = {k: opt.default for k, opt in declared.items()} | dict(options)
    return LOSSES[method].check_options(full, level, shapes)


def map_shapes(pairs: tuple[str, ...], lengths: dict[str, int], student_modality: str, proxy: str) -> MapShapes:
    """The attention-map sizes (Tq, Tk) of each distilled pair on the student's side and the
    teacher's: ``'Y<-X'`` attends from X's steps (queries) to Y's (keys), a memory transformer
    ``'X*'`` from X to X; the student's proxies have the teacher's lengths under
    ``proxy='down'`` and its input's length under ``'full'`` (mmdistill.models.student)."""
    from mmdistill.modalities import parse_pair
    from mmdistill.models.teacher import is_memory, memory_query

    out: MapShapes = {}
    for pair in pairs:
        kv, query = (memory_query(pair),) * 2 if is_memory(pair) else parse_pair(pair)
        teacher = (int(lengths[query]), int(lengths[kv]))
        student = teacher if proxy == "down" else (int(lengths[student_modality]),) * 2
        out[pair] = (student, teacher)
    return out


def build_loss(method: str, ctx: DistillContext, options: dict[str, Any]) -> DistillLoss:
    """Build the loss registered as ``method`` with its options (the params.yaml entry)."""
    import mmdistill.distill  # noqa: F401  (imports every method module, filling LOSSES)

    if method not in LOSSES:
        raise KeyError(f"unknown distillation method '{method}'; known: {sorted(LOSSES)}")
    return LOSSES[method](ctx, **options)
