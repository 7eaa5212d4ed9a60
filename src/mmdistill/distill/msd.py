"""Modality-specific distillation (MSD) for a unimodal student.

Jin, Sanjabi, Nie, Tan, Ren and Firooz, "Modality-specific Distillation" (arXiv 2101.01881).
Only the abstract is used; what it states:

* a student trained by plain KD on multimodal data "doesn't have access to modality-specific
  predictions"; MSD makes the student mimic the teacher's *modality-specific predictions*
  through one *auxiliary loss term per modality*;
* because each modality matters differently, the auxiliary terms are *weighted*, and the
  weights may be *meta-learned* ("a meta-learning approach to learn the optimal weights").

Everything else below is this project's reconstruction (formulas not given in the abstract):

    L_KD = KD(z_T(x), z_S(x)) + sum_m w_m * KD(z_T(x^m), z_S^m(x))

with ``KD(a, b) = T^2 KL(softmax(a/T) || softmax(b/T))`` per sample (Hinton KD, as in
:mod:`mmdistill.distill.hinton`), averaged over the batch, and ``x^m`` the input with every
modality but m zeroed (zeros are also what padding looks like).

Teacher side. ``z_T(x^m)`` is the frozen teacher's prediction on ``x^m``: the loss asks for the
views ``{'V': ('V',), 'A': ('A',), 'L': ('L',)}`` (:meth:`teacher_views`), which the training
loop computes once per data set.

Student side (our choice). The student reads one modality s (video in paper 002).

* For m = s, masking the other modalities leaves the student's input unchanged, so its
  modality-specific prediction *is* its prediction: ``z_S^s(x) = z_S(x)`` -- exact, no choice.
* For m != s the student cannot see m, and ``x^m`` would hide its only input (a constant
  prediction). Its counterpart is an auxiliary head owned by this loss, ``Linear(P -> C)`` on
  the student's penultimate features: ``z_S^m(x) = head_m(penultimate_S(x))``. Gradients reach
  the student's shared representation through the head, so the student must encode what the
  teacher would predict from audio alone and from language alone, as far as video allows;
  the heads are discarded after training (inference cost unchanged). Heads for m != s and
  not the student's own logits, because one set of logits cannot match three different targets.

Weights (option ``weighting``), in every scheme non-negative and summing to 1 over the
auxiliary modalities (per sample for 'instance'), so the auxiliary terms together weigh as
much as one KD term. Saliency of modality m for a sample (x, y), as in the project's
reconstruction: the drop in the teacher's true-class probability when m is removed (zeroed),
``s_m = p_T(y | x) - p_T(y | x without m)``. Saliencies become weights by
:func:`normalize_saliency`: positive parts normalized to sum 1, uniform when no modality has
a positive saliency (removing any one of them does not hurt the teacher).

* ``'population'``: one weight per modality from the dataset-mean saliency, computed once at
  construction by running the teacher over the training split (a buffer, checkpointed).
* ``'instance'``: per-sample normalized saliency; the removal views ``'no_V'``, ``'no_A'``,
  ``'no_L'`` are cached by the loop beside the keep-only views, so it costs no teacher pass.
* ``'meta'``: learning-to-reweight (Ren, Zeng, Yang and Urtasun, ICML 2018) with one weight
  per modality. Every ``meta_every`` training steps: perturbation ``eps = 0`` on the
  auxiliary terms, one virtual SGD step of the student ``theta'(eps) = theta - eta *
  grad_theta sum_m eps_m KD_m`` (through :func:`torch.func.functional_call`), the student's
  cross-entropy on a random validation batch at ``theta'``, and its gradient ``g`` w.r.t.
  ``eps``. Terms whose up-weighting would lower the validation loss get weight
  ``max(-g_m, 0)``, normalized to sum 1 (a step where none would leaves the weights as they
  are). The step size eta only scales g (``g_m = -eta <grad L_val, grad KD_m>`` at eps = 0), so
  it cancels in the normalization: eta = 1. The weights then move by an exponential moving
  average, ``w <- momentum * w + (1 - momentum) * w_step`` (``meta_momentum`` 0 = plain
  per-step L2RW), starting from uniform; they are a buffer (checkpointed). The virtual step's
  training forward runs the student's attention step by step
  (:func:`~mmdistill.models.transformer.explicit_attention`): PyTorch's fused CPU attention
  kernel has no double backward. The
  validation batch is drawn with the global torch RNG (seeded by the caller, checkpointed by
  the loop) and run in eval mode.
* ``'uniform'``: ``w_m = 1/M`` (an ablation of the weighting).

The weights used (mean over the epoch's samples) and the mean auxiliary terms are reported by
:meth:`epoch_log` as ``w_<m>`` and ``term_<m>``; the training loop writes them to curves.csv.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mmdistill.data.dataset import Batch, SplitData, mask_inputs
from mmdistill.distill.base import DistillContext, DistillLoss, Option, register
from mmdistill.modalities import MODALITIES
from mmdistill.models.outputs import NOTHING, ModelOutput
from mmdistill.models.transformer import explicit_attention

log = logging.getLogger(__name__)

WEIGHTINGS = ("population", "instance", "meta", "uniform")


def kd_per_sample(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD per sample, ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``: (B, C), (B, C) -> (B,)."""
    T = temperature
    log_p_s = F.log_softmax(z_s / T, dim=-1)
    log_p_t = F.log_softmax(z_t.detach() / T, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * (T * T)


def true_class_probability(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(B, C), (B,) -> (B,) softmax probability of each sample's true class."""
    return logits.softmax(-1).gather(1, label.view(-1, 1)).squeeze(1)


def normalize_saliency(saliency: torch.Tensor) -> torch.Tensor:
    """Saliencies (..., M) -> weights (..., M), non-negative and summing to 1 over the last axis.

    Positive parts divided by their sum; uniform ``1/M`` where no entry is positive.
    """
    pos = saliency.clamp(min=0)
    total = pos.sum(-1, keepdim=True)
    uniform = torch.full_like(saliency, 1.0 / saliency.shape[-1])
    return torch.where(total > 0, pos / total.clamp(min=torch.finfo(pos.dtype).tiny), uniform)


def removal_view(m: str) -> tuple[str, ...]:
    """Modalities kept when m is removed."""
    return tuple(k for k in MODALITIES if k != m)


@torch.no_grad()
def population_saliency(
    teacher: nn.Module, split: SplitData, modalities: tuple[str, ...], batch_size: int
) -> torch.Tensor:
    """Mean over ``split`` of ``p_T(y|x) - p_T(y|x without m)`` per modality m: (M,).

    The teacher runs in eval mode on the device of its parameters; removed modalities are zeroed.
    """
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    total = torch.zeros(len(modalities), dtype=torch.float64)
    for b in split.batches(batch_size):
        b = b.to(device)
        p_full = true_class_probability(teacher(b.inputs, NOTHING).logits, b.label)  # (B,)
        for j, m in enumerate(modalities):
            p_without = true_class_probability(teacher(mask_inputs(b.inputs, removal_view(m)), NOTHING).logits, b.label)
            total[j] += (p_full - p_without).sum().double().cpu()
    teacher.train(was_training)
    return (total / len(split)).float()


@register
class MSD(DistillLoss):
    """KD on the full prediction plus weighted per-modality KD terms (see the module docstring).

    Options:
        temperature:   softmax temperature T of every KD term (> 0; default 4.0, as 'hinton').
        weighting:     'population' (default), 'instance', 'meta' or 'uniform'.
        modalities:    modalities with an auxiliary term (default all of V, A, L).
        meta_every:    'meta' only: look-ahead every this many training steps (default 1);
                       each look-ahead costs about two extra student passes and a double backward.
        meta_momentum: 'meta' only: moving-average factor of the weights in [0, 1) (default 0.9).

    Needs ``ctx.extra['student']`` (its input modality; for 'meta' also its parameters),
    ``'teacher'``, ``'train_split'`` and ``'batch_size'`` for 'population',
    ``'valid_split'`` and ``'batch_size'`` for 'meta'. The modules are kept out of this loss's
    submodules, so its parameters are its heads only.
    """

    name = "msd"
    levels = ("final",)

    OPTIONS = {
        "temperature": Option(float, 4.0, above=0),
        "weighting": Option(str, "population", choices=WEIGHTINGS),
        "modalities": Option(list, list(MODALITIES), choices=MODALITIES),
        "meta_every": Option(int, 1, minimum=1),
        "meta_momentum": Option(float, 0.9, minimum=0, below=1),
    }

    def __init__(
        self,
        ctx: DistillContext,
        *,
        temperature: float = 4.0,
        weighting: str = "population",
        modalities: list[str] | tuple[str, ...] = MODALITIES,
        meta_every: int = 1,
        meta_momentum: float = 0.9,
    ):
        super().__init__(ctx)
        if not temperature > 0:
            raise ValueError(f"msd: temperature must be > 0, got {temperature}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"msd: unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
        bad = [m for m in modalities if m not in MODALITIES]
        if bad or not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"msd: modalities must be distinct letters of {MODALITIES}, got {list(modalities)}")
        if not (isinstance(meta_every, int) and meta_every >= 1):
            raise ValueError(f"msd: meta_every must be a positive integer, got {meta_every!r}")
        if not 0 <= meta_momentum < 1:
            raise ValueError(f"msd: meta_momentum must be in [0, 1), got {meta_momentum}")
        self.temperature, self.weighting = float(temperature), weighting
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.meta_every, self.meta_momentum = meta_every, float(meta_momentum)

        student = self._need(ctx, "student")
        inputs = tuple(getattr(student, "input_modalities", ()))
        if len(inputs) != 1:
            raise ValueError(f"msd: the student must read exactly one modality, it reads {list(inputs)}")
        self.student_modality = inputs[0]
        s_out, _ = ctx.probe(NOTHING, NOTHING)
        P, C = s_out.penultimate.shape[1], s_out.logits.shape[1]
        self.heads = nn.ModuleDict({m: nn.Linear(P, C) for m in self.modalities if m != self.student_modality})

        M = len(self.modalities)
        if weighting == "population":
            teacher, split = self._need(ctx, "teacher"), self._need(ctx, "train_split")
            saliency = population_saliency(teacher, split, self.modalities, int(self._need(ctx, "batch_size")))
            self.register_buffer("saliency", saliency)
            self.register_buffer("weights", normalize_saliency(saliency))
            log.info(
                "msd: population saliency %s -> weights %s",
                dict(zip(self.modalities, saliency.tolist())),
                dict(zip(self.modalities, self.weights.tolist())),
            )
        elif weighting in ("meta", "uniform"):
            self.register_buffer("weights", torch.full((M,), 1.0 / M))
        if weighting == "meta":
            # plain attributes, not submodules: the student is trained by the loop, not by this loss
            object.__setattr__(self, "_student", student)
            object.__setattr__(self, "_valid", self._need(ctx, "valid_split"))
            self.meta_batch_size = int(self._need(ctx, "batch_size"))
            self.meta_step = 0  # training steps seen; checkpointed as the module's extra state
        self._reset_log()

    @staticmethod
    def _need(ctx: DistillContext, key: str):
        if key not in ctx.extra:
            raise ValueError(f"msd needs ctx.extra[{key!r}] (has {sorted(ctx.extra)})")
        return ctx.extra[key]

    # -- contract -------------------------------------------------------------------------

    def teacher_views(self) -> dict[str, tuple[str, ...]]:
        views = {m: (m,) for m in self.modalities}
        if self.weighting == "instance":
            views.update({f"no_{m}": removal_view(m) for m in self.modalities})
        return views

    # -- loss -----------------------------------------------------------------------------

    def student_view(self, student: ModelOutput, m: str) -> torch.Tensor:
        """The student's counterpart of the teacher's modality-m prediction: (B, C)."""
        return student.logits if m == self.student_modality else self.heads[m](student.penultimate)

    def aux_terms(self, student: ModelOutput, teacher: ModelOutput) -> torch.Tensor:
        """Per-sample auxiliary KD terms (B, M), one column per modality."""
        missing = [m for m in self.modalities if m not in teacher.views]
        if missing:
            raise KeyError(
                f"msd: the teacher output lacks the views {missing} (has {sorted(teacher.views)}); "
                f"the training loop attaches the views of teacher_views()"
            )
        return torch.stack(
            [
                kd_per_sample(self.student_view(student, m), teacher.views[m].logits, self.temperature)
                for m in self.modalities
            ],
            dim=1,
        )

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> torch.Tensor:
        z_s, z_t = student.logits, teacher.logits
        if z_s.shape != z_t.shape:
            raise ValueError(f"msd: student logits {tuple(z_s.shape)} and teacher logits {tuple(z_t.shape)} differ")
        main = kd_per_sample(z_s, z_t, self.temperature).mean()
        aux = self.aux_terms(student, teacher)  # (B, M)
        w = self.current_weights(teacher, batch)  # (M,) or (B, M), constants
        aux_loss = aux.mean(0) @ w if w.dim() == 1 else (aux * w).sum(1).mean()
        self._accumulate(w, aux, len(batch))
        return main + aux_loss

    def current_weights(self, teacher: ModelOutput, batch: Batch) -> torch.Tensor:
        if self.weighting == "instance":
            return self.instance_weights(teacher, batch.label)
        if self.weighting == "meta" and self.training and torch.is_grad_enabled():
            if self.meta_step % self.meta_every == 0:
                self.meta_update(teacher, batch)
            self.meta_step += 1
        return self.weights.clone()  # later look-aheads update the buffer in place

    def get_extra_state(self) -> dict:
        return {"meta_step": self.meta_step} if self.weighting == "meta" else {}

    def set_extra_state(self, state: dict) -> None:
        if self.weighting == "meta":
            self.meta_step = int(state["meta_step"])

    def instance_weights(self, teacher: ModelOutput, label: torch.Tensor) -> torch.Tensor:
        """(B, M) normalized per-sample saliencies from the cached full and removal views."""
        with torch.no_grad():
            p_full = true_class_probability(teacher.logits, label)  # (B,)
            sal = torch.stack(
                [p_full - true_class_probability(teacher.views[f"no_{m}"].logits, label) for m in self.modalities],
                dim=1,
            )  # (B, M)
            return normalize_saliency(sal)

    # -- meta-learned weights -------------------------------------------------------------

    def validation_batch(self, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A random validation batch (global torch RNG): the student's inputs and the labels."""
        n = len(self._valid)
        idx = torch.randperm(n)[: min(self.meta_batch_size, n)]
        inputs = {self.student_modality: self._valid.inputs[self.student_modality][idx].to(device)}
        return inputs, self._valid.label[idx].to(device)

    def meta_update(self, teacher: ModelOutput, batch: Batch) -> None:
        """One learning-to-reweight look-ahead; moves ``self.weights`` (see the module docstring)."""
        student = self._student
        named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        names, params = [n for n, _ in named], [p for _, p in named]
        with explicit_attention():
            out = functional_call(student, dict(named), (batch.inputs,))
        terms = self.aux_terms(out, teacher).mean(0)  # (M,)
        eps = torch.zeros_like(terms, requires_grad=True)
        grads = torch.autograd.grad((eps * terms).sum(), params, create_graph=True, allow_unused=True)
        ahead = {n: p if g is None else p - g for n, p, g in zip(names, params, grads)}  # eta = 1
        inputs, label = self.validation_batch(terms.device)
        was_training = student.training
        student.eval()
        try:
            val_loss = F.cross_entropy(functional_call(student, ahead, (inputs, NOTHING)).logits, label)
        finally:
            student.train(was_training)
        (g_eps,) = torch.autograd.grad(val_loss, eps)
        with torch.no_grad():
            step = (-g_eps).clamp(min=0)
            total = step.sum()
            step = torch.where(total > 0, step / total.clamp(min=torch.finfo(step.dtype).tiny), self.weights)
            self.weights.mul_(self.meta_momentum).add_(step, alpha=1 - self.meta_momentum)

    # -- logging --------------------------------------------------------------------------

    def _reset_log(self) -> None:
        self._w_sum: torch.Tensor | None = None
        self._term_sum: torch.Tensor | None = None
        self._n = 0

    def _accumulate(self, w: torch.Tensor, aux: torch.Tensor, n: int) -> None:
        w_sum = w.detach() * n if w.dim() == 1 else w.detach().sum(0)
        t_sum = aux.detach().sum(0)
        self._w_sum = w_sum if self._w_sum is None else self._w_sum + w_sum
        self._term_sum = t_sum if self._term_sum is None else self._term_sum + t_sum
        self._n += n

    def epoch_log(self) -> dict[str, float]:
        """Mean weight and mean auxiliary term per modality since the last call."""
        if self._n == 0:
            return {}
        w, t = (self._w_sum / self._n).tolist(), (self._term_sum / self._n).tolist()
        out = {f"w_{m}": v for m, v in zip(self.modalities, w)}
        out.update({f"term_{m}": v for m, v in zip(self.modalities, t)})
        self._reset_log()
        return out
