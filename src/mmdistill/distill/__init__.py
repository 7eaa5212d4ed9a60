"""Distillation losses, one file per method; importing this package registers them all."""

from mmdistill.distill.base import LOSSES, DistillContext, DistillLoss, build_loss, register  # noqa: F401
from mmdistill.distill import hinton  # noqa: F401  (registers 'hinton')
from mmdistill.distill import crd  # noqa: F401  (registers 'crd')
from mmdistill.distill import edam  # noqa: F401  (registers 'edam')
from mmdistill.distill import msd  # noqa: F401  (registers 'msd')
from mmdistill.distill import distillvlm  # noqa: F401  (registers 'distillvlm')
