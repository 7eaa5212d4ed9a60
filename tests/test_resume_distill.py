"""Students trained with a distillation loss that keeps state between steps: CRD (memory
banks), MSD with meta-learned modality weights, DistillVLM (a queue of teacher tokens).

For each, on the tiny configuration and in process:

* two runs from the same seed are bit-identical (history, weights, the loss's state);
* a run interrupted after its first epoch and started again resumes from the checkpoint and
  ends bit-identical to the uninterrupted run -- which needs the loss's state restored too.
"""

from __future__ import annotations

import pytest
import torch

from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import load_split
from mmdistill.experiment import blueprint, build_from_blueprint, make_distillation
from mmdistill.registry import Registry, Run
from mmdistill.train import loop
from mmdistill.train.loop import TrainConfig, train
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 3
STUDENTS = ["c5_crd_attn", "c5_msd_meta", "c5_distillvlm"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny study's registry, its synthetic splits and one trained-for-nothing teacher."""
    params = tiny_params()
    params["data"]["synthetic"].update(n_train=64, n_valid=24, n_test=8)
    params["train"].update(epochs=EPOCHS, early_stop=EPOCHS, batch_size=16)
    params["methods"]["crd"]["options"].update(nce_k=16, feat_dim=8)
    params["methods"]["distillvlm"]["options"].update(queue_size=32, tokens=8)
    params["methods"]["msd"]["options"].update(meta_every=2)
    reg = Registry(params)
    d = tmp_path_factory.mktemp("resume_distill")
    raw = acquire(params["data"], d / "raw", progress=False)
    prepare_dataset(params["data"], raw, d / "data.h5", d / "summary.json")
    splits = {s: load_split(d / "data.h5", s) for s in ("train", "valid")}
    torch.manual_seed(0)
    teacher = build_from_blueprint(blueprint(reg, Run("teacher", "complete", 0), splits["train"].feature_dims))
    return reg, splits, teacher.state_dict()


def fit(setup, name: str, resume_path):
    """One student run as `train_run` makes it (same construction order), in process."""
    reg, splits, teacher_state = setup
    run = Run("student", name, 0)
    cfg = TrainConfig.from_dict(reg.params["train"])
    torch.manual_seed(run.seed)
    dims = splits["train"].feature_dims
    model = build_from_blueprint(blueprint(reg, run, dims))
    teacher = build_from_blueprint(blueprint(reg, reg.teacher_run(run), dims))
    teacher.load_state_dict(teacher_state)
    kd = make_distillation(reg, run, model, splits["train"], splits["valid"], cfg.batch_size, teacher=teacher)
    res = train(
        model,
        splits["train"],
        splits["valid"],
        cfg,
        seed=run.seed,
        run_label=run.id,
        resume_path=resume_path,
        config_hash="h",
        kd=kd,
        progress=False,
    )
    return model, kd.loss, res


def history(res):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in res.history]


def assert_same_state(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k}"
        else:
            assert a[k] == b[k], f"{what}: {k}"


@pytest.mark.parametrize("name", STUDENTS)
def test_distilled_student_reruns_and_resumes_bit_identical(setup, name, tmp_path, monkeypatch):
    ref_model, ref_loss, ref = fit(setup, name, tmp_path / "ref.pt")
    assert ref.epochs_run == EPOCHS and ref.resumed_from_epoch == 0

    # the same seed again: bit-identical
    model, loss, res = fit(setup, name, tmp_path / "again.pt")
    assert history(res) == history(ref)
    assert_same_state(ref_model.state_dict(), model.state_dict(), "student")
    assert_same_state(ref_loss.state_dict(), loss.state_dict(), "distillation loss")

    # killed once the first epoch's checkpoint is written, then started again
    real_save = loop.save_resume
    saved = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saved.append(1)
        raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(loop, "save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(setup, name, tmp_path / "resumed.pt")
    assert len(saved) == 1
    monkeypatch.setattr(loop, "save_resume", real_save)
    model, loss, res = fit(setup, name, tmp_path / "resumed.pt")
    # the kill fell before the last epoch: the resumed run trained the remaining epochs itself
    assert res.resumed_from_epoch == 1 < res.epochs_run == EPOCHS
    assert history(res) == history(ref)
    assert_same_state(ref_model.state_dict(), model.state_dict(), "student")
    assert_same_state(ref_loss.state_dict(), loss.state_dict(), "distillation loss")
