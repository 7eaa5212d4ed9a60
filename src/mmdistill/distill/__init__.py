"""Distillation losses, one file per method; importing this package registers them all."""

from mmdistill.distill import (
    crd,  # noqa: F401  (registers 'crd')
    distillvlm,  # noqa: F401  (registers 'distillvlm')
    edam,  # noqa: F401  (registers 'edam')
    hinton,  # noqa: F401  (registers 'hinton')
    msd,  # noqa: F401  (registers 'msd')
)
from mmdistill.distill.base import LOSSES, DistillContext, DistillLoss, build_loss, register  # noqa: F401
