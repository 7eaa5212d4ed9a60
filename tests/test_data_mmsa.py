"""MMSA's pickles (right-padded, stated lengths, BERT text), data sets, label rules, checksums,
and widths from the data, on fixtures in the published files' layouts (tests/data_layouts.py)."""

from __future__ import annotations

import copy
import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest

from mmdistill.data import SPLITS, catalogue, mmsa_pkl
from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import DataError, load_split, read_feature_dims
from mmdistill.data.download import fetch, sha256sum
from mmdistill.data.prepare import discretize, fit_right_padded, prepare
from tests.data_layouts import WIDTHS_MOSEI_MMSA, WIDTHS_MOSI_MULT, dump, mmsa_layout, mult_layout, row_value

SIZES = {"train": 6, "valid": 4, "test": 4}
STEPS = {"text": 8, "audio": 12, "vision": 10}
LENGTHS = {"V": 4, "A": 5, "L": 3}


def data_cfg(source: str, **block) -> dict:
    cfg = {
        "source": source,
        "dataset": "mosei",
        "label_rule": "round",
        "lengths": dict(LENGTHS),
        "synthetic": {"seed": 1, "n_train": 8, "n_valid": 2, "n_test": 2},
        "mult_pkl": {"urls": [], "path": None, "sha256": None},
        "mmsa_pkl": {"urls": [], "path": None, "sha256": {"mosei": None, "mosi": None}},
        "sdk_csd": {"base_urls": [], "path": None, "sha256": {}},
    }
    cfg[source].update(block)
    return cfg


@pytest.fixture
def mmsa_file(tmp_path):
    return dump(mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA), tmp_path / "MOSEI" / "Processed" / "unaligned_50.pkl")


def test_reader_takes_stated_lengths_and_text_mask(mmsa_file):
    raw, notes = mmsa_pkl.load(mmsa_file)
    src = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA)
    tr = raw["train"]
    assert tr["text"].shape == (6, 8, 768) and tr["text"].dtype == np.float32
    assert tr["audio"].shape == (6, 12, 74) and tr["vision"].shape == (6, 10, 35)
    np.testing.assert_array_equal(tr["lengths"]["A"], src["train"]["audio_lengths"])
    np.testing.assert_array_equal(tr["lengths"]["V"], src["train"]["vision_lengths"])
    # the text's padding rows are not zero: its length comes from text_bert's attention mask
    np.testing.assert_array_equal(tr["lengths"]["L"], src["train"]["text_bert"][:, 1].sum(axis=1))
    assert tr["lengths"]["L"].tolist() == [1 + (3 * i + 4) % 8 for i in range(6)]
    assert list(tr["id"][:2]) == ["vid000$_$1", "vid000$_$2"]
    assert tr["labels"].shape == (6,)
    assert notes["train"] == mmsa_pkl.TEXT_LENGTH_FROM_MASK


def test_prepare_keeps_last_true_steps_of_right_padded_sequences(mmsa_file):
    raw, _ = mmsa_pkl.load(mmsa_file)
    arrays, summary = prepare(raw, LENGTHS, "mmsa_pkl", padding="right")
    a = arrays["train"]
    assert a["text"].shape == (6, 3, 768) and a["audio"].shape == (6, 5, 74) and a["vision"].shape == (6, 4, 35)
    for i in range(6):
        for key, j, T in (("audio", 1, 5), ("vision", 0, 4), ("text", 2, 3)):
            true = int(raw["train"]["lengths"]["AVL"[["audio", "vision", "text"].index(key)]][i])
            keep = min(true, T)
            assert a["length"][i, j] == keep
            # the last `keep` true rows, in order, at the end; zero rows before them
            want = [row_value(i, k, key) for k in range(true - keep, true)]
            got = a[key][i, T - keep :, 0]
            if key == "audio" and true <= T:  # row 0 holds -inf in column 0, cleaned to 0
                want[0] = 0.0
            np.testing.assert_allclose(got, want, rtol=1e-6)
            assert (a[key][i, : T - keep] == 0).all()
    assert summary["feature_dims"] == {"V": 35, "A": 74, "L": 768}
    assert "right-padded" in summary["padding"]
    stats = summary["splits"]["train"]
    assert stats["stored_steps"] == {"V": 10, "A": 12, "L": 8}
    # BERT's outputs at [PAD] are not zero: every text shorter than 8 tokens has such rows, dropped
    assert stats["nonzero_after_length"] == {"V": 0, "A": 0, "L": sum(1 + (3 * i + 4) % 8 < 8 for i in range(6))}
    assert stats["truncated"]["A"] == sum(1 + (3 * i + 5) % 12 > 5 for i in range(6))
    # -inf only where the kept window reaches row 0 (sequences no longer than T)
    assert stats["nonfinite"]["A"]["neginf"] == sum(1 + (3 * i + 5) % 12 <= 5 for i in range(6))


def test_stated_lengths_win_over_zero_rows_and_odd_lengths_are_counted():
    x = np.zeros((3, 6, 2), np.float32)
    x[0, :4] = [[1, 1], [0, 0], [0, 0], [2, 2]]  # zero rows inside the true length are data
    x[1, :2] = 5
    x[1, 4] = 7  # a row after the stated length: dropped, counted
    x[2, :6] = np.arange(1, 7)[:, None]
    d = {
        "vision": x,
        "audio": x,
        "text": x,
        "labels": np.zeros(3),
        "id": np.array(["a", "b", "c"]),
        "lengths": {"V": np.array([4, 2, 9]), "A": np.array([4, 2, 6]), "L": np.array([4, 2, 6])},
    }
    raw = {s: copy.deepcopy(d) for s in SPLITS}
    arrays, summary = prepare(raw, {"V": 5, "A": 5, "L": 5}, "test", padding="right")
    v = arrays["train"]["vision"][:, :, 0]
    np.testing.assert_array_equal(v[0], [0, 1, 0, 0, 2])
    np.testing.assert_array_equal(v[1], [0, 0, 0, 5, 5])
    np.testing.assert_array_equal(v[2], [2, 3, 4, 5, 6])  # 9 stated, 6 stored: clipped, last 5 kept
    assert arrays["train"]["length"][:, 0].tolist() == [4, 2, 5]
    stats = summary["splits"]["valid"]
    assert stats["nonzero_after_length"]["V"] == 1
    assert stats["length_beyond_stored"] == {"V": 1, "A": 0, "L": 0}
    assert stats["truncated"]["V"] == 1 and stats["truncated"]["A"] == 1


def test_fit_right_padded_matches_a_loop():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 9, 3)).astype(np.float32)
    length = rng.integers(0, 10, 50).clip(max=9)
    out = fit_right_padded(x, length, 4)
    for i in range(50):
        want = np.zeros((4, 3), np.float32)
        k = min(4, length[i])
        if k:
            want[4 - k :] = x[i, length[i] - k : length[i]]
        np.testing.assert_array_equal(out[i], want)


def test_text_token_ids_without_features_is_a_clear_error(tmp_path):
    raw = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA)
    for s in SPLITS:
        del raw[s]["text"]
    with pytest.raises(
        DataError, match=r"ids_only\.pkl: split 'train' has BERT token ids .*trains on per-step features.*MMSA-FET"
    ):
        mmsa_pkl.load(dump(raw, tmp_path / "ids_only.pkl"))


def test_without_text_bert_the_text_length_ends_at_the_last_nonzero_row(tmp_path):
    raw_in = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA, text_bert=False)
    raw, notes = mmsa_pkl.load(dump(raw_in, tmp_path / "no_bert.pkl"))
    assert notes["valid"] == mmsa_pkl.TEXT_LENGTH_FROM_ROWS
    assert raw["valid"]["lengths"]["L"].tolist() == [1 + (3 * i + 4) % 8 for i in range(4)]


def test_reader_errors_name_file_split_and_key(tmp_path):
    raw = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA)
    del raw["valid"]["audio_lengths"]
    with pytest.raises(DataError, match=r"bad\.pkl: split 'valid' lacks keys \['audio_lengths'\].*unaligned_50"):
        mmsa_pkl.load(dump(raw, tmp_path / "bad.pkl"))
    raw = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA)
    raw["test"]["vision_lengths"] = raw["test"]["vision_lengths"][:-1]
    with pytest.raises(DataError, match=r"split 'test': 'vision_lengths' must be 4 lengths"):
        mmsa_pkl.load(dump(raw, tmp_path / "bad2.pkl"))
    raw = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA)
    raw["train"]["text_bert"] = raw["train"]["text_bert"][:, :2]
    with pytest.raises(DataError, match=r"'text_bert' has shape \(6, 2, 8\)"):
        mmsa_pkl.load(dump(raw, tmp_path / "bad3.pkl"))


def test_widths_must_agree_across_splits(tmp_path):
    raw = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA)
    raw["test"]["audio"] = raw["test"]["audio"][:, :, :70]
    loaded, _ = mmsa_pkl.load(dump(raw, tmp_path / "w.pkl"))
    with pytest.raises(DataError, match=r"split 'test': 'audio' has 70 features per step, split 'train' has 74"):
        prepare(loaded, LENGTHS, "mmsa_pkl", padding="right")


# ----------------------------------------------------------------------------- label rules


def test_label_rules_on_every_boundary():
    y = np.array([-3, -2.5, -2, -1.5, -1, -0.5, -0.2, 0, 0.2, 0.5, 1, 1.5, 2, 2.5, 3, 1 / 3, -2 / 3])
    _, round7 = discretize(y, rule="round")
    _, sdk7 = discretize(y, rule="sdk")
    assert (round7 - 3).tolist() == [-3, -2, -2, -2, -1, 0, 0, 0, 0, 0, 1, 2, 2, 2, 3, 0, -1]
    # CMU-MultimodalSDK cmumosei_round: boundaries go towards zero, the rest away from zero
    assert (sdk7 - 3).tolist() == [-3, -3, -2, -2, -1, -1, -1, 0, 1, 1, 1, 2, 2, 3, 3, 1, -1]
    with pytest.raises(ValueError, match="unknown label rule"):
        catalogue.classes(y, "floor")


def test_label_rule_reaches_summary_h5_and_table_heading(mmsa_file, tmp_path):
    from mmdistill.report.table import to_markdown

    cfg = data_cfg("mmsa_pkl", path=str(mmsa_file))
    cfg["label_rule"] = "sdk"
    raw = acquire(cfg, tmp_path / "raw")
    summary = prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["label_rule"] == "sdk" and "cmumosei_round" in summary["rounding"]
    with h5py.File(tmp_path / "d.h5") as f:
        assert f.attrs["label_rule"] == "sdk"
    labels = mmsa_layout(SIZES, STEPS, WIDTHS_MOSEI_MMSA)["test"]["regression_labels"]
    assert load_split(tmp_path / "d.h5", "test").label.tolist() == (catalogue.classes(labels, "sdk") + 3).tolist()
    md = to_markdown(pd.DataFrame(), None, {"device": "cpu", "threads": 1}, "mmsa_pkl", "sdk")
    assert (
        md.splitlines()[0]
        == "# Table 1 — data: `mmsa_pkl`; 7 classes: SDK cmumosei_round(clip(y, -3, 3)) (label rule `sdk`)"
    )


# ----------------------------------------------------------------------------- acquire, sizes, checksums


def test_acquire_and_prepare_mmsa_with_checksum_sizes_and_widths(mmsa_file, tmp_path, caplog):
    digest = sha256sum(mmsa_file)
    cfg = data_cfg("mmsa_pkl", path=str(mmsa_file), sha256={"mosei": digest, "mosi": None})
    raw = acquire(cfg, tmp_path / "raw")
    assert raw == tmp_path / "raw" / "mmsa_mosei_unaligned_50.pkl" and raw.read_bytes() == mmsa_file.read_bytes()
    with caplog.at_level(logging.WARNING):
        summary = prepare_dataset(cfg, raw, tmp_path / "p" / "d.h5", tmp_path / "p" / "d.json")
    assert summary["raw"]["sha256"] == {raw.name: digest}
    assert summary["raw"]["verified"] == "matches the configured sha256"
    assert summary["raw"]["text_lengths"]["train"] == mmsa_pkl.TEXT_LENGTH_FROM_MASK
    assert summary["dataset"] == "mosei" and summary["feature_dims"] == {"V": 35, "A": 74, "L": 768}
    sizes = summary["expected_sizes"]
    assert sizes["expected"] == {"train": 16326, "valid": 1871, "test": 4659} and sizes["verdict"] == "mismatch"
    assert sizes["read"] == SIZES
    assert "split 'train' has 6 segments; the published mosei through mmsa_pkl has 16326" in caplog.text
    assert read_feature_dims(tmp_path / "p" / "d.h5") == {"V": 35, "A": 74, "L": 768}
    test = load_split(tmp_path / "p" / "d.h5", "test")
    assert test.feature_dims == {"V": 35, "A": 74, "L": 768} and test.segment_id[0] == "vid000$_$1"
    assert "right-padded" in summary["padding"]
    # sample 1: 1 + (3 + 5) % 12 = 9 true audio rows of 12 stored; the last 5 (rows 4..8) are kept
    np.testing.assert_allclose(test.inputs["A"][1, :, 0].numpy(), [row_value(1, k, "audio") for k in range(4, 9)])
    assert test.length[1].tolist() == [4, 5, 3]
    assert json.loads((tmp_path / "p" / "d.json").read_text())["padding"] == summary["padding"]


def test_wrong_checksum_names_the_published_file_it_is(mmsa_file, tmp_path, monkeypatch):
    digest = sha256sum(mmsa_file)
    monkeypatch.setitem(catalogue.PUBLISHED_SHA256, digest, "MMSA MOSI/Processed/unaligned_50.pkl")
    cfg = data_cfg("mmsa_pkl", path=str(mmsa_file), sha256={"mosei": "a" * 64, "mosi": None})
    with pytest.raises(DataError, match=r"sha256 mismatch: expected a{64}, got .*it is the published MMSA MOSI"):
        acquire(cfg, tmp_path / "raw")
    # no checksum configured: accepted, logged as unverified, recognized as published in the summary
    cfg = data_cfg("mmsa_pkl", path=str(mmsa_file))
    raw = acquire(cfg, tmp_path / "raw")
    summary = prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["raw"]["verified"] == (
        "unverified against the configuration, but it is the published MMSA MOSI/Processed/unaligned_50.pkl"
    )
    monkeypatch.setitem(catalogue.PUBLISHED_SHA256, digest, "MMSA SIMS/Processed/unaligned_39.pkl")
    with pytest.raises(DataError, match=r"CH-SIMS labels lie in \[-1, 1\]"):
        prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")


def test_unverified_local_file_and_download_are_logged(mmsa_file, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        acquire(data_cfg("mmsa_pkl", path=str(mmsa_file)), tmp_path / "raw")
    assert f"{mmsa_file}: no sha256 configured to check it against: the file is unverified" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fetch([mmsa_file.as_uri()], tmp_path / "dl" / "x.pkl", None, progress=False)
    assert "with no sha256 to check: the file is unverified" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fetch([mmsa_file.as_uri()], tmp_path / "dl" / "y.pkl", sha256sum(mmsa_file), progress=False)
    assert "unverified" not in caplog.text


def test_published_checksums_in_params_match_the_catalogue():
    from tests.conftest import tiny_params

    sha = tiny_params()["data"]["mmsa_pkl"]["sha256"]
    assert catalogue.PUBLISHED_SHA256[sha["mosei"]] == "MMSA MOSEI/Processed/unaligned_50.pkl"
    assert catalogue.PUBLISHED_SHA256[sha["mosi"]] == "MMSA MOSI/Processed/unaligned_50.pkl"


def test_mult_pkl_mosi_widths_left_padding_and_sizes(tmp_path, caplog):
    sizes = {"train": 1284, "valid": 229, "test": 3}
    raw = mult_layout(sizes, {"text": 6, "audio": 7, "vision": 5}, WIDTHS_MOSI_MULT)
    path = dump(raw, tmp_path / "mosi_data_noalign.pkl")
    cfg = data_cfg("mult_pkl", path=str(path))
    cfg["dataset"] = "mosi"
    got = acquire(cfg, tmp_path / "raw")
    assert got.name == "mosi_data_noalign.pkl"
    with caplog.at_level(logging.WARNING):
        summary = prepare_dataset(cfg, got, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["feature_dims"] == {"V": 20, "A": 5, "L": 300}
    assert summary["expected_sizes"]["warnings"] == [
        "mosi through mult_pkl: split 'test' has 3 segments; the published mosi through mult_pkl has 686"
    ]
    assert "686" in caplog.text and summary["raw"]["verified"].startswith("unverified")
    assert "left-padded" in summary["padding"]
    tr = load_split(tmp_path / "d.h5", "train")
    i = 7  # text: 1 + (21 + 4) % 6 = 2 true rows, last L = 3 steps kept: one zero row first
    np.testing.assert_allclose(tr.inputs["L"][i, :, 0].numpy(), [0, row_value(i, 0, "text"), row_value(i, 1, "text")])
    assert tr.length[i].tolist() == [3, 5, 2]  # V: 1 + 27 % 5, A: 1 + 26 % 7 = 6 cut to 5, L: 2
    counts = summary["splits"]["train"]["nonfinite"]["A"]
    assert counts["neginf"] == 1284 and counts["nan"] == 4 and counts["all_nan_rows"] == 0


# ----------------------------------------------------------------------------- widths from the data


def test_a_model_built_from_768_wide_text_trains(mmsa_file, tmp_path, params):
    """The pipeline's own path: prepare an MMSA file, then train a teacher and a language student."""
    from mmdistill.experiment import train_run
    from mmdistill.registry import Registry, Run

    params["data"].update(data_cfg("mmsa_pkl", path=str(mmsa_file)))
    params["seeds"] = [0]
    params["train"].update(epochs=1, batch_size=4)
    params["student_modality"] = "L"
    reg = Registry(params, root=tmp_path)
    raw = acquire(params["data"], reg.raw_dir())
    prepare_dataset(params["data"], raw, reg.prepared(), reg.data_summary())
    m = train_run(reg, Run("teacher", "complete", 0), progress=False)
    assert np.isfinite(m["test"]["acc7"])
    import torch

    state = torch.load(reg.checkpoint(Run("teacher", "complete", 0)), weights_only=False)
    assert state["blueprint"]["feature_dims"] == {"V": 35, "A": 74, "L": 768}
    assert state["state_dict"]["proj.L.conv.weight"].shape[1] == 768
    s = train_run(reg, Run("student", "nokd", 0), progress=False)
    assert np.isfinite(s["test"]["acc7"]) and s["epochs_run"] == 1
