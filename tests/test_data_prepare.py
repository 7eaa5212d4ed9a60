"""prepare: lengths, cleaning counts, label rule, HDF5 that load_split reads; the data steps."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from mmdistill.data import SPLITS
from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import DataError, load_split
from mmdistill.data.prepare import discretize, fit_length, prepare, true_lengths, write_h5

LENGTHS = {"V": 4, "A": 3, "L": 2}


def split_of(n: int, t: int = 5, labels=None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = {
        "vision": rng.standard_normal((n, t, 35)).astype(np.float32),
        "audio": rng.standard_normal((n, t, 74)).astype(np.float32),
        "text": rng.standard_normal((n, t, 300)).astype(np.float32),
        "labels": np.zeros((n, 1, 1), np.float32)
        if labels is None
        else np.asarray(labels, np.float32).reshape(n, 1, 1),
        "id": np.array([f"seg{i}" for i in range(n)]),
    }
    return d


def raw_of(n: int = 3, **kw) -> dict:
    return {s: split_of(n, seed=i, **kw) for i, s in enumerate(SPLITS)}


def test_true_lengths_and_fit_length():
    x = np.zeros((3, 5, 2), np.float32)
    x[0, 2:] = 1  # 3 true rows
    x[1, 1, 0] = np.nan  # NaN is data: 4 true rows, including an all-zero row inside
    # x[2] all padding
    np.testing.assert_array_equal(true_lengths(x), [3, 4, 0])
    cut = fit_length(x, 2)  # last 2 rows
    assert cut.shape == (3, 2, 2) and (cut[0] == 1).all()
    padded = fit_length(x, 7)
    assert padded.shape == (3, 7, 2) and (padded[:, :2] == 0).all()
    assert (padded[0, 4:] == 1).all()


def test_lengths_cut_and_padded():
    raw = raw_of()
    raw["train"]["vision"][0, :3] = 0  # 2 true rows of 5
    arrays, summary = prepare(raw, LENGTHS, "test")
    a = arrays["train"]
    assert a["vision"].shape == (3, 4, 35) and a["audio"].shape == (3, 3, 74)
    assert a["text"].shape == (3, 2, 300)
    np.testing.assert_array_equal(a["length"][:, 0], [2, 4, 4])  # V: clipped to T=4
    np.testing.assert_array_equal(a["length"][:, 2], [2, 2, 2])
    np.testing.assert_array_equal(a["vision"][1], raw["train"]["vision"][1, -4:])
    assert summary["splits"]["train"]["truncated"]["V"] == 2
    longer = prepare(raw, {"V": 8, "A": 3, "L": 2}, "test")[0]["train"]
    assert (longer["vision"][:, :3] == 0).all() and longer["length"][1, 0] == 5


def test_nan_inf_counts_and_cleaning():
    raw = raw_of()
    a = raw["valid"]["audio"]
    a[0, -1, :5] = -np.inf  # 5 -inf in the kept window
    a[1, -1, 0] = np.inf
    a[2, -2, :] = np.nan  # one all-NaN row (74 NaN)
    a[2, -1, 3] = np.nan  # one more NaN
    a[0, 0, 0] = np.nan  # outside the kept window (T_A = 3 of 5): not counted
    raw["test"]["vision"][0, -1, 0] = np.nan
    arrays, summary = prepare(raw, LENGTHS, "test")
    counts = summary["splits"]["valid"]["nonfinite"]["A"]
    assert counts == {"nan": 75, "posinf": 1, "neginf": 5, "all_nan_rows": 1}
    assert summary["splits"]["test"]["nonfinite"]["V"]["nan"] == 1
    assert summary["splits"]["train"]["nonfinite"]["A"]["nan"] == 0
    for split in SPLITS:
        for key in ("vision", "audio", "text"):
            assert np.isfinite(arrays[split][key]).all()
    assert arrays["valid"]["audio"][2, -2].sum() == 0
    assert np.isnan(raw["valid"]["audio"][2, -2]).all()  # the input is not modified


def test_rounding_rule_half_to_even():
    labels = [-3, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.0, 1 / 3, -2 / 3]
    y, label7 = discretize(np.array(labels))
    np.testing.assert_array_equal(label7, [0, 1, 1, 3, 3, 5, 5, 6, 3, 2])
    assert y.dtype == np.float32 and label7.dtype == np.int64
    _, l7 = discretize(np.array([3.00001, -3.00001]))  # float error is clipped
    np.testing.assert_array_equal(l7, [6, 0])


def test_out_of_range_and_nan_labels_are_errors():
    raw = raw_of(n=4)
    raw["valid"]["labels"][:2] = 3.6
    with pytest.raises(DataError, match=r"valid.*2 labels lie outside \[-3, 3\]"):
        prepare(raw, LENGTHS, "test")
    raw = raw_of(n=4)
    raw["test"]["labels"][1] = np.nan
    with pytest.raises(DataError, match="'test': 1 labels are NaN"):
        prepare(raw, LENGTHS, "test")


def test_empty_or_missing_split_is_an_error():
    raw = raw_of()
    raw["test"] = {k: v[:0] for k, v in raw["test"].items()}
    with pytest.raises(DataError, match="'test' is empty"):
        prepare(raw, LENGTHS, "test")
    raw = raw_of()
    del raw["valid"]
    with pytest.raises(DataError, match="valid"):
        prepare(raw, LENGTHS, "test")
    raw = raw_of()
    raw["train"]["vision"] = raw["train"]["vision"][:, :, :30]
    with pytest.raises(DataError, match="vision"):
        prepare(raw, LENGTHS, "test")


def test_summary_histogram_and_h5_loads(tmp_path):
    labels = [-3, -2, 0.4, 0.6, 1.5, 3]
    raw = {s: split_of(6, labels=labels, seed=i) for i, s in enumerate(SPLITS)}
    arrays, summary = prepare(raw, LENGTHS, "constructed")
    assert summary["splits"]["train"]["class_histogram"] == [1, 1, 0, 1, 1, 1, 1]
    assert summary["n"] == {"train": 6, "valid": 6, "test": 6}
    out = write_h5(arrays, summary, tmp_path / "d.h5")
    data = load_split(out, "valid")
    assert len(data) == 6 and data.lengths == LENGTHS
    assert data.label.tolist() == [0, 1, 3, 4, 5, 6]
    assert data.segment_id == [f"seg{i}" for i in range(6)]
    np.testing.assert_allclose(data.inputs["A"].numpy(), arrays["valid"]["audio"])
    with h5py.File(out) as f:
        assert f.attrs["source"] == "constructed"
        assert json.loads(f.attrs["lengths"]) == LENGTHS
        assert "halves to even" in f.attrs["rounding"] and f.attrs["format_version"] == 2
        assert f.attrs["label_rule"] == "round"
        assert json.loads(f.attrs["feature_dims"]) == {"V": 35, "A": 74, "L": 300}
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary left


SYN_CFG = {
    "source": "synthetic",
    "lengths": {"V": 8, "A": 8, "L": 4},
    "synthetic": {"seed": 7, "n_train": 40, "n_valid": 10, "n_test": 12},
    "mult_pkl": {"urls": [], "path": None, "sha256": None},
    "sdk_csd": {"base_urls": [], "path": None, "sha256": {}},
}


def test_synthetic_acquire_and_prepare_dataset(tmp_path):
    raw = acquire(SYN_CFG, tmp_path / "raw", progress=False)
    assert raw == tmp_path / "raw" / "mosei_synthetic.pkl" and raw.is_file()
    summary = prepare_dataset(SYN_CFG, raw, tmp_path / "p" / "d.h5", tmp_path / "p" / "d.json")
    assert summary["n"] == {"train": 40, "valid": 10, "test": 12}
    assert summary["splits"]["train"]["nonfinite"]["A"]["neginf"] > 0
    assert len(summary["raw"]["sha256"]["mosei_synthetic.pkl"]) == 64
    assert json.loads((tmp_path / "p" / "d.json").read_text()) == json.loads(json.dumps(summary))
    train = load_split(tmp_path / "p" / "d.h5", "train")
    assert len(train) == 40 and train.lengths == {"V": 8, "A": 8, "L": 4}
    assert (train.length > 0).all() and (train.length[:, 0] <= 8).all()
    # the same seed gives the same raw bytes
    raw2 = acquire(SYN_CFG, tmp_path / "raw2", progress=False)
    assert raw2.read_bytes() == raw.read_bytes()


def test_cleaning_replaces_every_non_finite_value_with_zero():
    from mmdistill.data.prepare import clean_

    x = np.array([[[np.nan, np.inf, -np.inf, 2.5], [np.nan, np.nan, np.nan, np.nan]]], dtype=np.float32)
    counts = clean_(x)
    assert counts == {"nan": 5, "posinf": 1, "neginf": 1, "all_nan_rows": 1}
    assert x.tolist() == [[[0.0, 0.0, 0.0, 2.5], [0.0, 0.0, 0.0, 0.0]]]  # in place, 0 for each kind


@pytest.mark.parametrize("scenario", ["mosei_like", "known_answer"])
def test_synthetic_scenario_picks_its_generator(tmp_path, scenario):
    import pickle

    from mmdistill.data import synthetic

    cfg = {**SYN_CFG, "synthetic": {**SYN_CFG["synthetic"], "scenario": scenario}}
    raw = pickle.loads(acquire(cfg, tmp_path, progress=False).read_bytes())
    s = cfg["synthetic"]
    make = synthetic.generate if scenario == "mosei_like" else synthetic.generate_known_answer
    want = make(s["n_train"], s["n_valid"], s["n_test"], cfg["lengths"], np.random.default_rng(s["seed"]))
    for split in SPLITS:
        for key, value in want[split].items():
            np.testing.assert_array_equal(raw[split][key], value, err_msg=f"{split}/{key}")
    default = acquire(SYN_CFG, tmp_path / "default", progress=False)  # no scenario given: mosei_like
    assert (default.read_bytes() == (tmp_path / default.name).read_bytes()) == (scenario == "mosei_like")


def test_chunked_scans_cover_every_sample(monkeypatch):
    # the padding scans work through the samples in chunks; with chunks of 3 rows, 11 samples
    # span four chunks and each result must equal the one-chunk result
    from mmdistill.data import prepare as prep

    rng = np.random.default_rng(5)
    x = rng.normal(size=(11, 6, 2)).astype(np.float32)
    for i in range(11):  # left padding of i % 4 rows, trailing zeros of i % 3 rows
        x[i, : i % 4] = 0
        x[i, 6 - i % 3 :] = 0
    length = rng.integers(1, 7, size=11)

    def scans():
        return (
            prep.true_lengths(x),
            prep.trailing_lengths(x),
            prep.fit_right_padded(x, length, 4),
            prep.nonzero_after(x, length),
        )

    monkeypatch.setattr(prep, "_ROW_CHUNK", 10**6)
    whole = scans()
    monkeypatch.setattr(prep, "_ROW_CHUNK", 3)
    for a, b in zip(scans(), whole):
        np.testing.assert_array_equal(a, b)
    assert whole[0].tolist() == [6 - i % 4 for i in range(11)]  # true length: from the first non-zero row
