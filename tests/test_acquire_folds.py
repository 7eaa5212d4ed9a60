"""The SDK source's folds: a configured folds file is used and checked (missing, not JSON, not
the expected mapping: a DataError naming the file, and nothing written), and base URLs with a
trailing slash."""

from __future__ import annotations

import json

import pytest

from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import DataError
from tests.test_data_sdk_csd import TEST, TRAIN, VALID, cfg_for, make_csd


def test_configured_folds_file_is_used_and_checked(tmp_path):
    make_csd(tmp_path / "csd")
    folds = {"train": TRAIN[:2], "valid": [*TRAIN[2:], *VALID], "test": TEST}  # not the standard folds
    (tmp_path / "folds.json").write_text(json.dumps(folds))
    cfg = cfg_for(tmp_path / "csd", folds=str(tmp_path / "folds.json"))
    raw = acquire(cfg, tmp_path / "raw")
    summary = prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert str(tmp_path / "folds.json") in json.dumps(summary["raw"]["folds"])
    assert summary["n"]["train"] > 0 and summary["n"]["valid"] > 0 and summary["n"]["test"] > 0

    for name, content, message in [
        ("absent.json", None, r"absent\.json: folds file does not exist"),
        ("bad.json", "{not json", r"bad\.json: folds file is not valid JSON"),
        ("list.json", json.dumps({"train": [], "valid": "v0"}), r"list\.json: expected \{'train': \[video ids\]"),
    ]:
        if content is not None:
            (tmp_path / name).write_text(content)
        wrong = cfg_for(tmp_path / "csd", folds=str(tmp_path / name))
        with pytest.raises(DataError, match=message):
            prepare_dataset(wrong, raw, tmp_path / "e.h5", tmp_path / "e.json")
    assert not (tmp_path / "e.h5").exists()


def test_base_url_with_a_trailing_slash(file_server, tmp_path):
    root, base = file_server
    make_csd(root, nested=True)
    raw = acquire(cfg_for(base_urls=[base + "/"]), tmp_path / "raw", progress=False)
    assert len(list(raw.glob("*.csd"))) == 4
