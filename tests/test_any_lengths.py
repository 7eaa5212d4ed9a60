"""The registry accepts sequence lengths for any student modality that the student cannot take
directly (a proxy longer than the student's input is up-sampled, a shorter one down-sampled, by
factors that need not divide); every such student must then give the teacher's shapes on every
distilled pair, so that no accepted setting fails later in a loss."""

from __future__ import annotations

import pytest
import torch

from mmdistill.experiment import blueprint, build_from_blueprint
from mmdistill.modalities import FEATURE_DIM, parse_pair
from mmdistill.models import Request
from mmdistill.models.configurations import CONFIGURATIONS
from mmdistill.registry import Registry, Run

LENGTHS = [
    {"V": 5, "A": 13, "L": 7},  # longer than the student's input, not a multiple of it
    {"V": 17, "A": 3, "L": 2},  # much shorter, not a divisor
    {"V": 2, "A": 3, "L": 9},
]


@pytest.mark.parametrize("modality", ["V", "A", "L"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_accepted_lengths_give_the_teachers_shapes(params, modality, lengths):
    params["data"]["lengths"] = dict(lengths)
    params["student_modality"] = modality
    params["model"].update(d_model=8, n_heads=2, n_layers=1)
    reg = Registry(params)  # accepted
    g = torch.Generator().manual_seed(0)
    x = {m: torch.randn(2, t, FEATURE_DIM[m], generator=g) for m, t in lengths.items()}
    torch.manual_seed(0)
    teacher = build_from_blueprint(blueprint(reg, Run("teacher", "complete", 0), FEATURE_DIM)).eval()
    for name in ("c1_edam_s_attn", "c5_crd_attn", "c5_edam_t_attn"):
        spec = reg.students[name]
        pairs = frozenset(CONFIGURATIONS[spec.configuration].distilled_pairs)
        student = build_from_blueprint(blueprint(reg, Run("student", name, 0), FEATURE_DIM)).eval()
        with torch.no_grad():
            s_out = student(x, Request(attention=pairs, post_attention=pairs))
            t_out = teacher(x, Request(attention=pairs, post_attention=pairs))
        assert s_out.logits.shape == (2, 7)
        for pair in pairs:
            kv, q = (pair[0], pair[0]) if pair.endswith("*") else parse_pair(pair)  # memory: self-attention
            s_map, t_map = s_out.attention[pair][0], t_out.attention[pair][0]
            if spec.proxy == "down":  # the student's proxies have the teacher's lengths
                assert s_map.shape == t_map.shape == (2, 2, lengths[q], lengths[kv]), (name, pair)
                assert s_out.post_attention[pair][0].shape == t_out.post_attention[pair][0].shape
            else:  # EDAM-T keeps full-length proxies: the student's input length on both axes
                assert s_map.shape == (2, 2, lengths[modality], lengths[modality]), (name, pair)
            assert torch.isfinite(s_map).all()
