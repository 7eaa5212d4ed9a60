"""Raw sources: MulT pickle reader, SDK .csd reader, and acquire() for both (local server)."""

from __future__ import annotations

import functools
import json
import pickle
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmdistill.data import SPLITS, mult_pkl, sdk_csd
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


# ----------------------------------------------------------------------------- SDK .csd

DIMS = {"L": 300, "A": 74, "V": 35, "labels": 7}
LENGTHS = {"V": 3, "A": 4, "L": 2}


def write_csd(path: Path, root: str, videos: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        meta = g.create_group("metadata")
        meta.create_dataset("root name", data=root)
        data = g.create_group("data")
        for vid, (x, t) in videos.items():
            v = data.create_group(vid)
            v.create_dataset("features", data=x)
            v.create_dataset("intervals", data=t)


def feature_rows(video_index: int, m: str, times: np.ndarray) -> np.ndarray:
    """Row k of modality m of video i holds the value 100 i + k + 1 everywhere (never 0)."""
    k = np.arange(len(times))
    return np.repeat((100 * video_index + k + 1.0)[:, None], DIMS[m], axis=1)


def make_csd_dir(directory: Path, n_videos: int = 6, nested: bool = False) -> dict:
    """Videos of 10 s with two labelled segments [1, 4] and [5, 9]; 1 s feature rows."""
    vids = [f"v{i}" for i in range(n_videos)]
    starts = np.arange(0.0, 10.0)
    t = np.c_[starts, starts + 1]  # rows [0,1], [1,2], ..., [9,10]
    for m, rel in sdk_csd.CSD_FILES.items():
        path = directory / (rel if nested else Path(rel).name)
        if m == "labels":
            videos = {}
            for i, v in enumerate(vids):
                lab = np.zeros((2, 7))
                lab[:, 0] = [-1.5 + 0.5 * (i % 7), 0.25 * (i % 5)]
                videos[v] = (lab, np.array([[1.0, 4.0], [5.0, 9.0]]))
        else:
            order = np.random.default_rng(len(m)).permutation(10)  # stored out of time order
            videos = {v: (feature_rows(i, m, starts)[order], t[order]) for i, v in enumerate(vids)}
            if m == "V":
                del videos["v1"]  # a video without video features
        write_csd(path, f"root_{m}", videos)
    return {"train": vids[:4], "valid": vids[4:5], "test": vids[5:]}


def test_sdk_csd_segments_and_overlap(tmp_path):
    folds = make_csd_dir(tmp_path)
    raw = sdk_csd.load(tmp_path, LENGTHS, folds)
    tr = raw["train"]
    assert list(tr["id"]) == ["v0[0]", "v0[1]", "v1[0]", "v1[1]", "v2[0]", "v2[1]", "v3[0]", "v3[1]"]
    assert tr["audio"].shape == (8, 4, 74) and tr["vision"].shape == (8, 3, 35)
    assert tr["text"].shape == (8, 2, 300) and tr["labels"].shape == (8, 1, 1)
    # segment [1, 4] of v0 overlaps rows 1, 2, 3 (row k has value k + 1): audio T=4 -> 1 pad row
    np.testing.assert_array_equal(tr["audio"][0, :, 0], [0, 2, 3, 4])
    np.testing.assert_array_equal(tr["vision"][0, :, 0], [2, 3, 4])
    np.testing.assert_array_equal(tr["text"][0, :, 0], [3, 4])  # the last 2 rows kept
    # segment [5, 9] of v2: rows 5..8 -> values 206..209
    np.testing.assert_array_equal(tr["audio"][5, :, 0], [206, 207, 208, 209])
    assert (tr["vision"][2:4] == 0).all()  # v1 has no video features
    np.testing.assert_allclose(tr["labels"][:4, 0, 0], [-1.5, 0.0, -1.0, 0.25])
    assert list(raw["test"]["id"]) == ["v5[0]", "v5[1]"]


def test_sdk_csd_hash_folds_are_deterministic(tmp_path):
    make_csd_dir(tmp_path, n_videos=40, nested=True)  # SDK sub-folder layout
    a = sdk_csd.load(tmp_path, LENGTHS)
    b = sdk_csd.load(tmp_path, LENGTHS)
    ids = {s: list(a[s]["id"]) for s in SPLITS}
    assert ids == {s: list(b[s]["id"]) for s in SPLITS}
    assert sum(len(v) for v in ids.values()) == 80
    for s in SPLITS:  # whole videos stay in one split
        assert all(sdk_csd.hash_fold(i.split("[")[0]) == s for i in ids[s])


def test_sdk_csd_errors(tmp_path):
    folds = make_csd_dir(tmp_path)
    with pytest.raises(DataError, match="in both 'train' and 'test'"):
        sdk_csd.load(tmp_path, LENGTHS, {**folds, "test": ["v0"]})
    with pytest.raises(DataError, match="no segment falls in split 'valid'"):
        sdk_csd.load(tmp_path, LENGTHS, {**folds, "valid": []})
    write_csd(tmp_path / "CMU_MOSEI_COVAREP.csd", "root_A", {"v0": (np.ones((2, 70)), np.array([[0.0, 1], [1, 2]]))})
    with pytest.raises(DataError, match=r"CMU_MOSEI_COVAREP\.csd: video v0 features have 70 columns"):
        sdk_csd.load(tmp_path, LENGTHS, folds)
    (tmp_path / "CMU_MOSEI_COVAREP.csd").unlink()
    with pytest.raises(DataError, match=r"missing \.csd files \['CMU_MOSEI_COVAREP\.csd'\]"):
        sdk_csd.load(tmp_path, LENGTHS, folds)


# ----------------------------------------------------------------------------- acquire


@pytest.fixture()
def file_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


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


def test_acquire_sdk_csd_download_and_prepare_with_folds(file_server, tmp_path):
    root, base = file_server
    folds = make_csd_dir(root, nested=True)
    cfg = cfg_for("sdk_csd", base_urls=[base + "/nothing/", base])
    raw_dir = acquire(cfg, tmp_path / "raw", progress=False)
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(Path(r).name for r in sdk_csd.CSD_FILES.values())
    (raw_dir / "mosei_folds.json").write_text(json.dumps(folds))
    summary = prepare_dataset(cfg, raw_dir, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["n"] == {"train": 8, "valid": 2, "test": 2}
    assert summary["raw"]["folds"].startswith("from ")
    assert summary["splits"]["train"]["zero_length"]["V"] == 2  # v1 has no video features
    assert len(summary["raw"]["sha256"]) == 4
    assert load_split(tmp_path / "d.h5", "train").length[0].tolist() == [3, 3, 2]


def test_acquire_sdk_csd_local_path_without_folds(tmp_path):
    make_csd_dir(tmp_path / "csd", n_videos=30)
    cfg = cfg_for("sdk_csd", path=str(tmp_path / "csd"))
    assert acquire(cfg, tmp_path / "raw") == tmp_path / "raw"
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.csd")) == sorted(
        p.name for p in (tmp_path / "csd").rglob("*.csd")
    )
    summary = prepare_dataset(cfg, tmp_path / "raw", tmp_path / "d.h5", tmp_path / "d.json")
    assert "not the standard folds" in summary["raw"]["folds"]
    assert sum(summary["n"].values()) == 60
