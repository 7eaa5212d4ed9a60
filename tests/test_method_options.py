"""Method options are checked against what each method declares (its ``OPTIONS``) before any
job runs: unknown names, types, ranges, allowed values, and the sizes its maps will have."""

from __future__ import annotations

import inspect

import pytest
import yaml

from mmdistill.distill import LOSSES
from mmdistill.registry import ParamsError, Registry
from tests.conftest import ROOT


def test_every_method_declares_exactly_its_keyword_options():
    """OPTIONS is the one list of a method's options: same names and defaults as __init__."""
    for name, cls in LOSSES.items():
        sig = inspect.signature(cls.__init__)
        keywords = {k: p.default for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
        declared = {k: opt.default for k, opt in cls.OPTIONS.items()}
        norm = {k: list(v) if isinstance(v, tuple) else v for k, v in keywords.items()}
        assert declared == norm, name


def test_paper_params_are_valid():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    from mmdistill.registry import deep_merge

    Registry(deep_merge(base, yaml.safe_load((ROOT / "params-paper.yaml").read_text())))


@pytest.mark.parametrize(
    ("student", "options", "match"),
    [
        ("c5_hinton", {"temprature": 2.0}, r"students\.c5_hinton\.options\.temprature: .*did you mean 'temperature'"),
        ("c5_hinton", {"temperature": -1.0}, r"options\.temperature: must be > 0, got -1\.0"),
        ("c5_hinton", {"temperature": "1e-3"}, r"temperature: must be a number, got '1e-3' \(str\); YAML reads"),
        ("c5_hinton", {"temperature": True}, r"temperature: must be a number"),
        ("c5_edam_t_attn", {"variant": "X"}, r"options\.variant: must be one of \['S', 'T'\], got 'X'"),
        ("c5_edam_s_attn", {"learn_upsampler": True}, r"learn_upsampler: applies to variant 'T' only"),
        ("c2_crd_attn", {"row_bins": 2.5}, r"row_bins: must be an integer or null"),
        ("c2_crd_attn", {"row_bins": 13}, r"row_bins: 13 bins of query rows, but the maps of"),
        ("c2_crd_attn", {"momentum": 1}, r"momentum: must be < 1"),
        ("c5_msd_meta", {"modalities": ["V", "X"]}, r"modalities: must be a non-empty list of distinct items"),
        ("c5_msd_meta", {"meta_every": 0}, r"meta_every: must be >= 1"),
        ("c5_distillvlm", {"tokens": 0}, r"tokens: must be >= 1"),
        ("nokd", {"temperature": 4.0}, r"method 'none' takes no options"),
    ],
)
def test_bad_student_option_is_named(params, student, options, match):
    params["students"][student]["options"] = {**params["students"][student].get("options", {}), **options}
    with pytest.raises(ParamsError, match=match):
        Registry(params)


def test_bad_method_default_is_named(params):
    params["methods"]["hinton"]["options"] = {"temprature": 4.0}
    with pytest.raises(ParamsError, match=r"methods\.hinton\.options\.temprature"):
        Registry(params)
    params["methods"]["hinton"]["options"] = {}
    params["methods"]["magic"] = {"alpha": 1.0, "beta": 1.0, "options": {}}
    with pytest.raises(ParamsError, match=r"methods\.magic: no such distillation method"):
        Registry(params)


def test_row_bins_from_the_defaults_too_large_for_short_sequences(params):
    """The tiny lengths (V 12) hold the default 2 bins; 4 steps of video do not hold 5."""
    params["methods"]["crd"]["options"]["row_bins"] = 5
    params["data"]["lengths"]["V"] = 4
    with pytest.raises(ParamsError, match=r"students\.c2_crd_attn .*\n  methods\.crd\.options\.row_bins: 5 bins"):
        Registry(params)


def test_maps_with_one_key_are_refused_for_edam(params):
    """Language of length 1: the maps attending to it are Tq x 1, every row is 1, and EDAM
    would add a constant (identical to no KD)."""
    params["data"]["lengths"]["L"] = 1
    with pytest.raises(ParamsError, match=r"(?s)students\.c1_edam_s_attn .*one key per row.*like no KD"):
        Registry(params)


def test_edam_t_maps_have_the_students_input_length(params):
    """EDAM-T's student keeps full-length proxies: its maps are T_V x T_V whatever the other
    lengths; video of length 1 makes them 1 x 1."""
    params["students"] = {k: v for k, v in params["students"].items() if k in ("nokd", "c5_edam_t_attn")}
    params["data"]["lengths"]["L"] = 1
    Registry(params)  # the student's maps are 12 x 12, the teacher's are up-sampled to them
    params["data"]["lengths"]["V"] = 1
    with pytest.raises(ParamsError, match=r"(?s)c5_edam_t_attn .*'V<-A' \(student 1x1, teacher 12x1\)"):
        Registry(params)
