"""Entropy Distillation in Attention Maps (EDAM), paper 002 eqs. 10-13.

For each distilled transformer pair and each layer, the attention scores of both sides go
through a temperature softmax (eqs. 10-11), and every row of the student's map is compared
with the matching row of the teacher's map by a cross-entropy ``F(a, b) = -sum_k a_k log b_k``
(eq. 13), averaged over rows, layers (eq. 12), heads and the batch, then over pairs.

Direction (option ``direction``). The paper writes ``F(a, b)`` with ``a`` the student row and
``b`` the teacher row. As a loss on the student, ``-sum_k s_k log t_k`` is linear in ``s`` and is
minimized by putting all of the student's mass on the teacher's largest entry: it does not
pull the student toward the teacher's distribution. The default, ``'teacher_target'``, uses the
teacher as the target, ``-sum_k t_k log s_k = KL(t || s) + H(t)``, which is minimized exactly
when the student row equals the teacher row (its minimum is the teacher entropy ``H(t)``, a
constant for the student). ``'paper_literal'`` gives the formula as printed.

Heads. When student and teacher have the same number of heads, head h is compared with head h;
otherwise both maps are first averaged over their heads (an average of distributions is a
distribution) and the averaged maps are compared.

Variants (option ``variant``, paper sec. 4.3):

* ``'S'`` (EDAM-S, down-sampled student): the student's proxy sequences are down-sampled to the
  teacher's lengths by the model, so the maps already have equal shapes; any mismatch is an error.
* ``'T'`` (EDAM-T, up-sampled teacher): the teacher's scores ``(Tq_t, Tk_t)`` are mapped to the
  student's ``(Tq_s, Tk_s)`` by a ``Linear(Tk_t -> Tk_s)`` along the key axis and a
  ``Linear(Tq_t -> Tq_s)`` along the query axis, one pair of layers per distilled transformer
  pair (shared by its layers and heads), applied to the scores before the temperature softmax.
  They start as linear-interpolation matrices (end points aligned, zero bias), so a constant or
  linear profile is reproduced exactly at the start. ``learn_upsampler`` (default True) makes
  them learned linear layers, as the paper writes ("we upsample the attention maps in the
  teacher transformer layers ... using linear layers"): they are trained with the student by
  the same optimizer, belong to the loss (not to the student, so the student's parameter count
  and inference cost do not include them) and are saved in the resume checkpoint, not in the
  student's ``model.pt``. Gradients reach the up-sampler but never the teacher (whose scores
  are detached first). Trained on this loss alone, the up-sampler is rewarded for moving the
  *target* toward the student (it can lower the loss by reshaping the teacher's maps instead
  of the student learning them); ``learn_upsampler: false`` keeps the fixed interpolation,
  which cannot drift.

Layers are processed one at a time, each fully vectorized over batch, heads and rows: stacking
them would copy every map (about 600 MB per pair at MOSEI sizes) for no gain in speed.

Maps the models already computed are reused (the default: temperature 1, teacher as target).
The teacher's target is its own attention map (EDAM-S; EDAM-T up-samples scores, so it
takes a softmax of its own), and the student's ``log softmax`` is ``scores - logsumexp``
with the row's log-sum-exp read off its map at the row maximum, where the map is at least
``1 / Tk``: no softmax or log-softmax over a map is computed by the loss
(:func:`map_cross_entropy`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.data.dataset import Batch
from mmdistill.distill.base import DistillContext, DistillLoss, Option, register
from mmdistill.models.outputs import ModelOutput, Request
from mmdistill.precision import float32_region

DIRECTIONS = ("teacher_target", "paper_literal")
VARIANTS = ("S", "T")


def interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) linear interpolation with aligned end points: ``W @ x`` resamples ``x``.

    Output i sits at input position ``i * (n_in - 1) / (n_out - 1)``; rows sum to 1, so constant
    and linear sequences are reproduced exactly. A single output sits at the middle.
    """
    if n_in == 1:
        return torch.ones(n_out, 1)
    pos = torch.full((1,), (n_in - 1) / 2) if n_out == 1 else torch.linspace(0, n_in - 1, n_out, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=n_in - 2)  # (n_out,)
    frac = (pos - lo).to(torch.float64)
    W = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    W[rows, lo] = 1 - frac
    W[rows, lo + 1] += frac
    return W.float()


class Upsampler(nn.Module):
    """Teacher scores (B, H, Tq_t, Tk_t) -> (B, H, Tq_s, Tk_s) with two linear maps.

    ``Linear(Tk_t -> Tk_s)`` on the key axis, then ``Linear(Tq_t -> Tq_s)`` on the query axis,
    initialized by :func:`interpolation_matrix` with zero biases; parameters when ``learn``,
    fixed buffers otherwise (same state-dict names either way).
    """

    def __init__(self, tq_t: int, tk_t: int, tq_s: int, tk_s: int, learn: bool):
        super().__init__()
        # a fixed axis of equal lengths is the identity (interpolation onto the same grid, zero
        # bias) and is skipped
        self.skip_k, self.skip_q = (not learn and tk_t == tk_s), (not learn and tq_t == tq_s)
        tensors = {
            "w_k": interpolation_matrix(tk_t, tk_s),  # (Tk_s, Tk_t)
            "b_k": torch.zeros(tk_s),
            "w_q": interpolation_matrix(tq_t, tq_s),  # (Tq_s, Tq_t)
            "b_q": torch.zeros(tq_s),
        }
        for name, x in tensors.items():
            if learn:
                self.register_parameter(name, nn.Parameter(x))
            else:
                self.register_buffer(name, x)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        x = scores if self.skip_k else F.linear(scores, self.w_k, self.b_k)  # (B, H, Tq_t, Tk_s)
        if not self.skip_q:
            x = torch.matmul(self.w_q, x) + self.b_q[:, None]  # (B, H, Tq_s, Tk_s)
        return x


def log_maps(scores: torch.Tensor, temperature: float, average_heads: bool) -> torch.Tensor:
    """Log of the temperature-softmax maps: (B, H, Tq, Tk) -> same, or (B, 1, Tq, Tk) averaged over heads."""
    logp = F.log_softmax(scores if temperature == 1 else scores / temperature, dim=-1)
    if average_heads:  # log of the mean over heads of the maps, computed stably
        logp = torch.logsumexp(logp, dim=1, keepdim=True) - math.log(scores.shape[1])
    return logp


def maps(scores: torch.Tensor, temperature: float, average_heads: bool) -> torch.Tensor:
    """The temperature-softmax maps: (B, H, Tq, Tk) -> same, or (B, 1, Tq, Tk) averaged over heads."""
    p = F.softmax(scores if temperature == 1 else scores / temperature, dim=-1)
    return p.mean(1, keepdim=True) if average_heads else p


class _RowCrossEntropy(torch.autograd.Function):
    """``-sum(a * log_softmax(b / t)) / rows`` with its gradients written out.

    Forward keeps ``log p = log_softmax(b / t)`` (what autograd would keep too). Backward:
    ``d/db = (p * rowsum(a) - a) * g / (t * rows)`` and ``d/da = -log p * g / rows``; autograd's
    own chain (a dot product, then log-softmax's backward) makes three passes over the map
    where this makes one.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
        logp = F.log_softmax(b if temperature == 1 else b / temperature, dim=-1)
        rows = logp.numel() // logp.shape[-1]
        ctx.save_for_backward(a, logp)
        ctx.temperature, ctx.rows = temperature, rows
        return -torch.dot(a.reshape(-1), logp.reshape(-1)) / rows

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, logp = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = logp * (-g / ctx.rows)
        if ctx.needs_input_grad[1]:
            grad_b = torch.exp(logp).mul_(a.sum(-1, keepdim=True)).sub_(a).mul_(g / (ctx.temperature * ctx.rows))
        return grad_a, grad_b, None


class _MapCrossEntropy(torch.autograd.Function):
    """``-sum(a * log softmax(b)) / rows`` given ``p = softmax(b)``, computed by the caller.

    ``log softmax(b) = b - lse`` with each row's log-sum-exp ``lse = max(b) - log p[argmax b]``
    (exact; ``p >= 1 / Tk`` there, so the log is well conditioned), which makes the forward
    two dot products and a row maximum. Backward: ``d/db = (p * rowsum(a) - a) * g / rows``
    (no exponential); ``d/da = -(b - lse) * g / rows``. ``p`` receives no gradient: it stands
    for the value of ``softmax(b)``, whose dependence on ``b`` is in ``d/db``.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        rows = b.numel() // b.shape[-1]
        a_sum = a.sum(-1)  # (...,)
        top, where = b.max(dim=-1, keepdim=True)  # (..., 1) each
        lse = (top - p.gather(-1, where).log()).squeeze(-1)  # (...,)
        ctx.rows = rows
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(a, p, a_sum, b, lse)
        else:
            ctx.save_for_backward(a, p, a_sum)
        return -(torch.dot(a.reshape(-1), b.reshape(-1)) - torch.dot(a_sum.reshape(-1), lse.reshape(-1))) / rows

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, p, a_sum, *b_lse = ctx.saved_tensors
        c = g / ctx.rows
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            b, lse = b_lse
            grad_a = (b - lse.unsqueeze(-1)) * -c
        if ctx.needs_input_grad[1]:
            grad_b = torch.addcmul(a * -c, p, (a_sum * c).unsqueeze(-1))  # (p * rowsum(a) - a) * c
        return grad_a, grad_b, None


def map_cross_entropy(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """:func:`row_cross_entropy` at temperature 1 for scores ``b`` whose map ``p = softmax(b)``
    is at hand (the model's own): a, b, p (..., Tk) -> scalar. ``p`` is used as a value only.
    """
    if not a.shape == b.shape == p.shape:
        raise ValueError(f"map_cross_entropy: shapes differ, {tuple(a.shape)}, {tuple(b.shape)}, {tuple(p.shape)}")
    return _MapCrossEntropy.apply(a, b, p.detach())


def row_cross_entropy(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of ``-sum_k a_k log softmax(b / t)_k``: a (..., Tk) rows of weights (a
    map), b (..., Tk) scores -> scalar. Gradients reach ``a`` and ``b``, whichever require them.
    """
    if a.shape != b.shape:
        raise ValueError(f"row_cross_entropy: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return _RowCrossEntropy.apply(a, b, float(temperature))


@register
class EDAM(DistillLoss):
    """Cross-entropy between matching attention-map rows (see the module docstring).

    Options:
        temperature:     softmax temperature t of eq. 11 (> 0; default 1.0). Above 1 softens
                         both maps so that the small attention weights also count.
        direction:       'teacher_target' (default; -t log s, minimal at s = t) or
                         'paper_literal' (-s log t, as printed in eq. 13).
        variant:         'S' (default; maps of equal shapes, EDAM-S) or 'T' (teacher maps
                         up-sampled to the student's sizes, EDAM-T).
        learn_upsampler: variant 'T' only: learned linear up-sampling layers, trained with the
                         student (unset or True, the default, as the paper); False = fixed
                         linear interpolation.
    """

    name = "edam"
    levels = ("attention",)
    OPTIONS = {
        "temperature": Option(float, 1.0, above=0),
        "direction": Option(str, "teacher_target", choices=DIRECTIONS),
        "variant": Option(str, "S", choices=VARIANTS),
        "learn_upsampler": Option(bool, None, nullable=True),  # unset: learned for variant 'T' (the paper)
    }

    @classmethod
    def check_options(cls, options, level, shapes):
        problems = []
        if options["learn_upsampler"] is not None and options["variant"] != "T":
            problems.append("learn_upsampler: applies to variant 'T' only")
        # a map with one key per row is all ones: the loss is a constant and trains nothing
        flat = [
            f"'{p}' (student {s[0]}x{s[1]}, teacher {t[0]}x{t[1]})"
            for p, (s, t) in shapes.items()
            if s[1] == 1 or (options["variant"] == "S" and t[1] == 1)
        ]
        if flat:
            problems.append(
                f"variant: the attention maps of {', '.join(flat)} have one key per row, so every row is 1 and "
                "EDAM would train exactly like no KD; lengthen data.lengths"
            )
        return problems

    def __init__(
        self,
        ctx: DistillContext,
        *,
        temperature: float = 1.0,
        direction: str = "teacher_target",
        variant: str = "S",
        learn_upsampler: bool | None = None,
    ):
        super().__init__(ctx)
        if not temperature > 0:
            raise ValueError(f"edam: temperature must be > 0, got {temperature}")
        if direction not in DIRECTIONS:
            raise ValueError(f"edam: unknown direction {direction!r}; expected one of {DIRECTIONS}")
        if variant not in VARIANTS:
            raise ValueError(f"edam: unknown variant {variant!r}; expected one of {VARIANTS}")
        if learn_upsampler is not None and variant != "T":
            raise ValueError("edam: learn_upsampler applies to variant 'T' only")
        if learn_upsampler is not None and not isinstance(learn_upsampler, bool):
            raise ValueError(f"edam: learn_upsampler must be true or false, got {learn_upsampler!r}")
        learn_upsampler = learn_upsampler is not False  # unset: learned (the paper's linear layers)
        if not self.pairs:
            raise ValueError("edam needs at least one distilled pair")
        self.temperature, self.direction, self.variant = float(temperature), direction, variant
        # the models' own maps serve where the loss would recompute them: the student's
        # (at temperature 1, as the map under the log) and the teacher's (EDAM-S target)
        self.student_maps = self.temperature == 1 and direction == "teacher_target"
        self.teacher_maps = self.student_maps and variant == "S"
        s_out, t_out = ctx.probe(self.student_request(), self.teacher_request())
        self.upsamplers = nn.ModuleDict()
        for key in self.pairs:
            s_layers, t_layers = s_out.attention.get(key), self._teacher_layers(t_out, key)
            (tq_s, tk_s), (tq_t, tk_t) = (
                self._map_shape(s_layers, key, "student"),
                self._map_shape(t_layers, key, "teacher"),
            )
            n_s, n_t = len(s_layers), len(t_layers)
            if n_s != n_t:
                raise ValueError(f"edam: pair '{key}' has {n_s} student layers but {n_t} teacher layers")
            if variant == "S" and (tq_s, tk_s) != (tq_t, tk_t):
                raise ValueError(
                    f"edam variant 'S' needs attention maps of equal shape, but pair '{key}' has student "
                    f"maps (Tq, Tk) = {(tq_s, tk_s)} and teacher maps {(tq_t, tk_t)}; down-sample the "
                    f"student's sequences to the teacher's lengths or use variant 'T'"
                )
            if variant == "T":
                self.upsamplers[key] = Upsampler(tq_t, tk_t, tq_s, tk_s, learn_upsampler)

    def _teacher_layers(self, out: ModelOutput, key: str) -> list[torch.Tensor] | None:
        """The teacher's per-layer maps (when it gives its maps) or scores of pair ``key``."""
        return (out.maps if self.teacher_maps else out.attention).get(key)

    def _map_shape(self, layers: list[torch.Tensor] | None, key: str, side: str) -> tuple[int, int]:
        if layers is None:
            what = "maps" if side == "teacher" and self.teacher_maps else "scores"
            raise KeyError(f"edam: the {side} output lacks attention {what} of pair '{key}'")
        shapes = {tuple(s.shape[2:]) for s in layers}
        if len(shapes) != 1:
            raise ValueError(f"edam: {side} layers of pair '{key}' have different map shapes {sorted(shapes)}")
        return shapes.pop()

    def student_request(self) -> Request:
        pairs = frozenset(self.pairs)
        return Request(attention=pairs, maps=pairs if self.student_maps else frozenset())

    def teacher_request(self) -> Request:
        pairs = frozenset(self.pairs)
        return Request(maps=pairs) if self.teacher_maps else Request(attention=pairs)

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> torch.Tensor:
        per_pair = []
        for key in self.pairs:
            s_layers, t_layers = student.attention.get(key), self._teacher_layers(teacher, key)
            s_maps = student.maps.get(key) if self.student_maps else [None] * len(s_layers or ())
            for side, got in (("student scores", s_layers), ("student maps", s_maps), ("teacher", t_layers)):
                if got is None:
                    raise KeyError(f"edam: the {side} of pair '{key}' are missing from the model output")
            if not len(s_layers) == len(s_maps) == len(t_layers):
                raise ValueError(f"edam: pair '{key}' got {len(s_layers)} student and {len(t_layers)} teacher layers")
            per_layer = [self._layer_loss(key, s, a, t) for s, a, t in zip(s_layers, s_maps, t_layers)]
            per_pair.append(torch.stack(per_layer).mean())  # mean over layers
        return torch.stack(per_pair).mean()  # mean over pairs

    def teacher_scores(self, key: str, scores: torch.Tensor) -> torch.Tensor:
        """The teacher's scores of pair ``key`` at the student's map size (detached input)."""
        scores = scores.detach()
        return self.upsamplers[key](scores) if self.variant == "T" else scores

    def _layer_loss(self, key: str, s: torch.Tensor, s_map: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        """Mean row cross-entropy of one layer: student scores (B, H_s, Tq, Tk), the student's
        map of them or None, teacher scores or map (B, H_t, Tq', Tk') -> scalar.

        Computed in float32 under bf16 autocast (see :mod:`mmdistill.precision`)."""
        region, (s, s_map, t) = float32_region(s, s_map, t)
        with region:
            return self._layer_loss_fp32(key, s, s_map, t)

    def _layer_loss_fp32(self, key: str, s: torch.Tensor, s_map: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        t = t.detach() if self.teacher_maps else self.teacher_scores(key, t)
        if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"edam: pair '{key}': student scores {tuple(s.shape)} and teacher scores "
                f"{tuple(t.shape)} (after up-sampling, if any) do not match"
            )
        average = s.shape[1] != t.shape[1]
        a, b = (t, s) if self.direction == "teacher_target" else (s, t)  # F(a, b) = -a log b
        if self.teacher_maps:  # the teacher's own maps (temperature 1)
            target = t.mean(1, keepdim=True) if average else t
        else:
            target = maps(a, self.temperature, average)  # (B, H, Tq, Tk), H = 1 when averaged
        if not average:
            if s_map is not None:
                return map_cross_entropy(target, b, s_map)
            return row_cross_entropy(target, b, self.temperature)
        logp = log_maps(b, self.temperature, average)
        n_rows = logp.numel() // logp.shape[-1]
        # sum over all rows of -sum_k a_k log b_k as one dot product (no (B, H, Tq, Tk) product
        # tensor), then the mean over batch, heads and rows
        return -torch.dot(target.reshape(-1), logp.reshape(-1)) / n_rows
