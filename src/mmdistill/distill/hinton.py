"""Hinton knowledge distillation on the logits.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015); the form and
the default temperature follow RepDistiller's ``DistillKL`` (Tian et al., ICLR 2020,
HobbitLong/RepDistiller):

    L_KD = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ),   averaged over the batch.

The T^2 factor keeps the gradient scale of the soft targets comparable to the cross-entropy
term as T changes. The training loop adds ``alpha * L_c`` (paper 002, eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmdistill.data.dataset import Batch
from mmdistill.distill.base import DistillContext, DistillLoss, Option, register
from mmdistill.models.outputs import ModelOutput


@register
class Hinton(DistillLoss):
    """Soft-target KD on the final layer.

    Options:
        temperature: softmax temperature T (> 0), default 4.0 as in RepDistiller. Larger T
            exposes more of the teacher's ranking of the wrong classes.
    """

    name = "hinton"
    levels = ("final",)
    OPTIONS = {"temperature": Option(float, 4.0, above=0)}

    def __init__(self, ctx: DistillContext, *, temperature: float = 4.0):
        super().__init__(ctx)
        if not temperature > 0:
            raise ValueError(f"hinton: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> torch.Tensor:
        z_s, z_t = student.logits, teacher.logits.detach()  # (B, C) each
        if z_s.shape != z_t.shape:
            raise ValueError(f"hinton: student logits {tuple(z_s.shape)} and teacher logits {tuple(z_t.shape)} differ")
        T = self.temperature
        log_p_s = F.log_softmax(z_s / T, dim=-1)
        log_p_t = F.log_softmax(z_t / T, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * T * T
