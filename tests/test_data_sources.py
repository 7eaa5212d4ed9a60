"""Raw sources: MulT pickle reader and acquire() (local server); the SDK .csd source: test_data_sdk_csd.py."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mmdistill.data import SPLITS, mult_pkl
from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import DataError, load_split

# ----------------------------------------------------------------------------- MulT pickle


def mult_raw(n: int = 3, t: int = 4) -> dict:
    rng = np.random.default_rng(0)
    return {
        s: {
            "text": rng.standard_normal((n, t, 300)),  # float64 as in the published pickle
            "audio": rng.standard_normal((n, t, 74)).astype(np.float32),
            "vision": rng.standard_normal((n, t, 35)).astype(np.float32),
            "labels": rng.uniform(-3, 3, (n, 1, 1)).astype(np.float32),
            "id": np.array([[f"vid{i}", "0.5", "3.0"] for i in range(n)], dtype=object),
        }
        for s in SPLITS
    }


def dump(obj, path: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mult_pkl_roundtrip(tmp_path, protocol):
    raw = mult_raw()
    out = mult_pkl.load(dump(raw, tmp_path / "m.pkl", protocol))
    assert set(out) == set(SPLITS)
    d = out["valid"]
    assert d["text"].dtype == np.float32 and d["text"].shape == (3, 4, 300)
    np.testing.assert_allclose(d["text"], raw["valid"]["text"], rtol=1e-6)
    assert d["labels"].shape == (3, 1, 1)
    assert list(d["id"]) == ["vid0_0.5_3.0", "vid1_0.5_3.0", "vid2_0.5_3.0"]


def test_mult_pkl_truncated(tmp_path):
    path = dump(mult_raw(), tmp_path / "m.pkl")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"m\.pkl: truncated pickle"):
        mult_pkl.load(path)


def test_mult_pkl_malformed(tmp_path):
    path = tmp_path / "m.pkl"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match=r"m\.pkl: malformed pickle"):
        mult_pkl.load(path)
    dump([1, 2, 3], path)
    with pytest.raises(DataError, match="expected a dict of splits, found list"):
        mult_pkl.load(path)


def test_mult_pkl_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("should never run",))

    path = dump({"train": Evil()}, tmp_path / "m.pkl")
    with pytest.raises(DataError, match="refusing to load global 'builtins.print'"):
        mult_pkl.load(path)


def test_mult_pkl_structure_errors(tmp_path):
    raw = mult_raw()
    del raw["test"]
    with pytest.raises(DataError, match=r"missing splits \['test'\]"):
        mult_pkl.load(dump(raw, tmp_path / "a.pkl"))
    raw = mult_raw()
    del raw["train"]["audio"]
    with pytest.raises(DataError, match=r"split 'train' lacks keys \['audio'\]"):
        mult_pkl.load(dump(raw, tmp_path / "b.pkl"))
    raw = mult_raw()
    raw["valid"]["vision"] = raw["valid"]["vision"][:, :, :20]
    with pytest.raises(DataError, match=r"b?c\.pkl: split 'valid': 'vision' has shape \(3, 4, 20\)"):
        mult_pkl.load(dump(raw, tmp_path / "c.pkl"))
    raw = mult_raw()
    raw["test"]["labels"] = raw["test"]["labels"][:2]
    with pytest.raises(DataError, match="'labels' must be 3 numbers"):
        mult_pkl.load(dump(raw, tmp_path / "d.pkl"))
    with pytest.raises(DataError, match="no such file"):
        mult_pkl.load(tmp_path / "absent.pkl")


# ----------------------------------------------------------------------------- acquire


LENGTHS = {"V": 3, "A": 4, "L": 2}


def cfg_for(source: str, **block) -> dict:
    cfg = {
        "source": source,
        "lengths": dict(LENGTHS),
        "synthetic": {"seed": 1, "n_train": 4, "n_valid": 2, "n_test": 2},
        "mult_pkl": {"urls": [], "path": None, "sha256": None},
        "sdk_csd": {"base_urls": [], "path": None, "sha256": {}},
    }
    cfg[source].update(block)
    return cfg


def test_acquire_mult_pkl_download_and_prepare(file_server, tmp_path):
    root, base = file_server
    dump(mult_raw(), root / "mosei.pkl")
    cfg = cfg_for("mult_pkl", urls=[base + "/missing.pkl", base + "/mosei.pkl"])
    raw = acquire(cfg, tmp_path / "raw", progress=False)
    assert raw == tmp_path / "raw" / "mosei_senti_data_noalign.pkl"
    summary = prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["source"] == "mult_pkl" and summary["n"]["test"] == 3
    assert load_split(tmp_path / "d.h5", "test").segment_id[0] == "vid0_0.5_3.0"


def test_acquire_mult_pkl_local_path(tmp_path):
    path = dump(mult_raw(), tmp_path / "local.pkl")
    got = acquire(cfg_for("mult_pkl", path=str(path)), tmp_path / "raw")
    assert got == tmp_path / "raw" / "mosei_senti_data_noalign.pkl"  # linked into the raw folder
    assert got.read_bytes() == path.read_bytes()
    with pytest.raises(DataError, match="does not exist"):
        acquire(cfg_for("mult_pkl", path=str(tmp_path / "nope.pkl")), tmp_path / "raw")
    with pytest.raises(DataError, match="sha256 mismatch"):
        acquire(cfg_for("mult_pkl", path=str(path), sha256="0" * 64), tmp_path / "raw")
