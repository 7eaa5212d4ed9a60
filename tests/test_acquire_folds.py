"""The SDK source's folds (a configured file, or one beside the .csd files), a local folder
with its folds file, the summary's record of where the data came from, and base URLs with a
trailing slash."""

from __future__ import annotations

import json

import pytest

from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import DataError
from tests.test_checksums import www  # noqa: F401 (fixture)
from tests.test_data_sources import cfg_for, make_csd_dir


def test_configured_folds_file_is_used_and_checked(tmp_path):
    folds = make_csd_dir(tmp_path / "csd")
    (tmp_path / "folds.json").write_text(json.dumps(folds))
    cfg = cfg_for("sdk_csd", path=str(tmp_path / "csd"), folds=str(tmp_path / "folds.json"))
    raw = acquire(cfg, tmp_path / "raw")
    summary = prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["raw"]["folds"] == f"from {tmp_path / 'folds.json'}"
    assert summary["n"] == {"train": 8, "valid": 2, "test": 2}
    assert summary["raw"]["path"] == str(raw) and summary["source_config"] == cfg["sdk_csd"]

    missing = cfg_for("sdk_csd", path=str(tmp_path / "csd"), folds=str(tmp_path / "absent.json"))
    with pytest.raises(DataError, match=r"absent\.json: configured folds file does not exist"):
        prepare_dataset(missing, raw, tmp_path / "e.h5", tmp_path / "e.json")
    (tmp_path / "bad.json").write_text("{not json")
    bad = cfg_for("sdk_csd", path=str(tmp_path / "csd"), folds=str(tmp_path / "bad.json"))
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        prepare_dataset(bad, raw, tmp_path / "e.h5", tmp_path / "e.json")
    (tmp_path / "list.json").write_text(json.dumps({"train": [], "valid": "v0"}))
    wrong = cfg_for("sdk_csd", path=str(tmp_path / "csd"), folds=str(tmp_path / "list.json"))
    with pytest.raises(DataError, match=r"list\.json: expected \{'train': \[video ids\]"):
        prepare_dataset(wrong, raw, tmp_path / "e.h5", tmp_path / "e.json")
    assert not (tmp_path / "e.h5").exists()


def test_folds_file_beside_a_local_copy_is_linked_and_used(tmp_path):
    folds = make_csd_dir(tmp_path / "csd")
    (tmp_path / "csd" / "mosei_folds.json").write_text(json.dumps(folds))
    cfg = cfg_for("sdk_csd", path=str(tmp_path / "csd"))
    raw = acquire(cfg, tmp_path / "raw" / "sub")  # missing folders are made
    assert json.loads((raw / "mosei_folds.json").read_text()) == folds
    summary = prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["raw"]["folds"] == f"from {raw / 'mosei_folds.json'}"


def test_base_url_with_a_trailing_slash(www, tmp_path):  # noqa: F811
    root, base = www
    make_csd_dir(root, nested=True)
    raw = acquire(cfg_for("sdk_csd", base_urls=[base + "/"]), tmp_path / "raw", progress=False)
    assert len(list(raw.glob("*.csd"))) == 4
