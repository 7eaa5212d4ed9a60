"""Models: transformer blocks, the MulT-style teacher, the unimodal student.

    config.py          ModelConfig (sizes, dropouts), PAPER_PRESET
    transformer.py     attention (fused, or explicit with scores), encoder layer and stack
    teacher.py         MulTTeacher and the parts it shares with the student
    student.py         UnimodalStudent (one input, own stream + two proxy streams)
    configurations.py  the five student-teacher configurations of paper 002 (section 4.2)
    outputs.py         Request and ModelOutput: what a forward pass is asked for and returns

Every model is called as ``model(inputs, request)`` (see :mod:`mmdistill.models.outputs`).
"""

from __future__ import annotations

from torch import nn

from mmdistill.models.config import PAPER_PRESET, ModelConfig
from mmdistill.models.configurations import CONFIGURATIONS, Configuration, get_configuration
from mmdistill.models.outputs import NOTHING, ModelOutput, Request
from mmdistill.models.student import UnimodalStudent
from mmdistill.models.teacher import MulTTeacher

__all__ = [
    "CONFIGURATIONS",
    "NOTHING",
    "PAPER_PRESET",
    "Configuration",
    "ModelConfig",
    "ModelOutput",
    "MulTTeacher",
    "Request",
    "UnimodalStudent",
    "build_student",
    "build_teacher",
    "count_parameters",
]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (what the paper's parameter counts measure)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_teacher(
    cfg: ModelConfig, branches: tuple[str, ...], feature_dims: dict[str, int] | None = None
) -> MulTTeacher:
    """A teacher with the given branches (('V', 'A', 'L') = Complete Teacher Network).

    ``feature_dims``: input width per modality, from the data (the pipeline always passes the
    widths its prepared file records); None means MulT's MOSEI widths, those of the synthetic
    data (:data:`mmdistill.modalities.FEATURE_DIM`)."""
    return MulTTeacher(cfg, tuple(branches), _dims(feature_dims))


def build_student(
    cfg: ModelConfig,
    configuration_key: str,
    input_modality: str = "V",
    target_lengths: dict[str, int] | None = None,
    proxy: str = "down",
    feature_dims: dict[str, int] | None = None,
) -> UnimodalStudent:
    """The student of a paper configuration ('complete', 'video', 'language', 'audio',
    'language_audio'); ``target_lengths`` are the teacher's lengths per modality;
    ``feature_dims`` as in :func:`build_teacher`."""
    conf = get_configuration(configuration_key)
    return UnimodalStudent(cfg, conf.student_transformers, input_modality, target_lengths, proxy, _dims(feature_dims))


def _dims(feature_dims: dict[str, int] | None) -> dict[str, int]:
    from mmdistill.modalities import FEATURE_DIM, MODALITIES

    if feature_dims is None:
        return dict(FEATURE_DIM)
    bad = [m for m in MODALITIES if not isinstance(feature_dims.get(m), int) or feature_dims[m] < 1]
    if bad:
        raise ValueError(f"feature_dims must give a positive int width for {list(MODALITIES)}, got {feature_dims}")
    return {m: int(feature_dims[m]) for m in MODALITIES}
