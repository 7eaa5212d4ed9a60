"""Distillation losses, one file per method; importing this package registers them all."""

from mmdistill.distill.base import LOSSES, DistillContext, DistillLoss, build_loss, register  # noqa: F401
