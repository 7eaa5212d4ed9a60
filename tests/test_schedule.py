"""Job priorities: the longest chain of training work starts first."""

from __future__ import annotations

from mmdistill.models.configurations import CONFIGURATIONS
from mmdistill.registry import Registry, Run
from mmdistill.schedule import priority, work

from .conftest import ROOT


def default_registry() -> Registry:
    return Registry.from_file(ROOT / "params.yaml")


def test_work_counts_the_transformers_the_models_have():
    reg = default_registry()
    for run in reg.runs():
        spec = reg.spec(run)
        if run.role == "teacher":
            assert work(reg, run) == len(spec.transformers), run.id
        else:
            assert work(reg, run) == CONFIGURATIONS[spec.configuration].n_transformers, run.id


def test_complete_teachers_then_nine_transformer_students_then_the_rest():
    reg = default_registry()
    p = {run: priority(reg, run) for run in reg.runs() if run.seed == 0}
    complete = p[Run("teacher", "complete", 0)]
    c1 = [v for r, v in p.items() if r.role == "student" and reg.spec(r).configuration == "complete"]
    one_branch = [v for r, v in p.items() if r.role == "teacher" and len(reg.spec(r).branches) == 1]
    others = [v for r, v in p.items() if r.role == "student" and reg.spec(r).configuration != "complete"]
    assert c1 and one_branch and others
    assert complete > max(c1) and min(c1) > max(one_branch) and min(one_branch) > max(others)
    # a teacher ranks by the longest student waiting for it, not by its own size alone
    assert complete == work(reg, Run("teacher", "complete", 0)) + max(c1)
