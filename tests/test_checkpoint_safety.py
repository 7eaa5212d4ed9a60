"""No checkpoint can run code: model.pt and last.pt are read with ``weights_only=True`` (tensors
and plain data only), and a file carrying any other pickled object is refused with a message."""

from __future__ import annotations

import pytest
import torch

from mmdistill.experiment import load_model, save_model
from mmdistill.io import CheckpointError, load_checkpoint
from mmdistill.models import ModelConfig, build_student


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a hostile checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def _student():
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "n_layers": 1})
    bp = {
        "role": "student",
        "model": {"d_model": 8, "n_heads": 2, "n_layers": 1},
        "configuration": "video",
        "input_modality": "V",
        "target_lengths": {"V": 8, "A": 8, "L": 4},
        "proxy": "down",
    }
    return build_student(cfg, "video", "V", bp["target_lengths"], "down"), bp


def test_checkpoint_round_trip_is_plain_data(tmp_path):
    model, bp = _student()
    save_model(tmp_path / "model.pt", model, bp)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)  # no allow-list needed
    assert ckpt["blueprint"] == bp
    loaded = load_model(tmp_path / "model.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_checkpoint_carrying_a_pickled_object_is_refused(tmp_path):
    model, bp = _student()
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pt"
    torch.save({"blueprint": {**bp, "extra": _RunsCode(marker)}, "state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"model\.pt: refused to load: it holds objects other than tensors"):
        load_model(path)
    assert not marker.exists(), "unpickling ran code"


def test_resume_checkpoint_carrying_a_pickled_object_is_refused(tmp_path):
    from tests.test_train import fit

    marker = tmp_path / "code-ran"
    torch.save({"config_hash": "h", "state": _RunsCode(marker)}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: refused to load"):
        fit(tmp_path, "last")  # resumes from tmp_path / "last.pt" under config hash "h"
    assert not marker.exists()


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    model, bp = _student()
    save_model(tmp_path / "model.pt", model, bp)
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
