"""Tiny teacher/student/loss set-ups shared by the precision and the CUDA tests."""

from __future__ import annotations

import torch

from mmdistill.distill.base import DistillContext, build_loss
from mmdistill.models import ModelConfig, build_student, build_teacher
from mmdistill.models.configurations import CONFIGURATIONS
from mmdistill.train.loop import Distillation

TINY_MODEL = {"d_model": 8, "n_heads": 2, "n_layers": 1}

# every registered method at one of its levels, with options small enough for tiny data
METHODS = {
    "hinton": ("final", {}),
    "crd_final": ("final", {"nce_k": 8, "feat_dim": 4}),
    "crd_penultimate": ("penultimate", {"nce_k": 8, "feat_dim": 4}),
    "crd_post_attention": ("post_attention", {"nce_k": 8, "feat_dim": 4}),
    "crd_attention": ("attention", {"nce_k": 8, "feat_dim": 4, "row_bins": 2}),
    "edam_s": ("attention", {"variant": "S"}),
    "edam_t": ("attention", {"variant": "T"}),
    "edam_t_temp2": ("attention", {"variant": "T", "temperature": 2.0}),
    "msd_instance": ("final", {"weighting": "instance"}),
    # every token is an anchor: no random subset, whose draw differs between CPU and CUDA RNGs
    "distillvlm": ("attention", {"tokens": None}),
}


def method_name(key: str) -> str:
    return key.split("_")[0]


NO_DROPOUT = {"relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0, "attn_dropout": 0.0}


def make_models(
    lengths: dict[str, int],
    configuration: str = "language_audio",
    proxy: str = "down",
    seed: int = 0,
    **model: float,
):
    """A complete teacher (frozen, eval mode) and a student of ``configuration``; ``model``
    overrides :data:`TINY_MODEL` (e.g. ``**NO_DROPOUT``)."""
    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict({**TINY_MODEL, **model})
    teacher = build_teacher(cfg, ("V", "A", "L")).eval().requires_grad_(False)
    student = build_student(cfg, configuration, "V", lengths, proxy)
    return teacher, student


def make_kd(key: str, student, teacher, split, batch_size: int, device: torch.device) -> Distillation:
    """The distillation of ``METHODS[key]`` for ``student`` and ``teacher`` (already on ``device``)."""
    level, options = METHODS[key]
    example = next(split.batches(batch_size)).to(device)

    def probe(s_req, t_req):
        was = student.training
        student.eval()
        with torch.no_grad():
            out = student(example.inputs, s_req), teacher(example.inputs, t_req)
        student.train(was)
        return out

    ctx = DistillContext(
        level=level,
        pairs=CONFIGURATIONS["language_audio"].distilled_pairs,
        n_data=len(split),
        probe=probe,
        extra={
            "student": student,
            "teacher": teacher,
            "train_split": split,
            "valid_split": split,
            "batch_size": batch_size,
            "device": device,
        },
    )
    loss = build_loss(method_name(key), ctx, dict(options)).to(device)
    return Distillation(teacher=teacher, loss=loss, alpha=1.0, beta=1.0)
