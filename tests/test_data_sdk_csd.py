"""The CMU-MultimodalSDK ``.csd`` source: files in the exact layout of the SDK's ``write_CSD``.

The fixture holds what real files hold: gzip-compressed datasets, metadata as one-element
JSON strings (13 keys), label rows out of time order, overlapping and zero-width label
segments, NaN and -inf in COVAREP, dropped FACET frames, a video without FACET and a video
that no standard fold lists. Its video ids are real ids of the shipped standard folds.

Expected values are worked out by hand from the fixture's construction (see ``make_csd``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from mmdistill.data import SPLITS, sdk_csd, split
from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import DataError, load_split
from mmdistill.data.download import sha256sum
from mmdistill.report.table import split_note, to_markdown
from tests.conftest import make_project, run, tiny_params

STD = json.loads(split.standard_path("mosei").read_text())
TRAIN, VALID, TEST = STD["train"][:3], STD["valid"][:1], STD["test"][:1]
NO_FOLD = "zz-in-no-fold"
VIDEOS = [*TRAIN, *VALID, *TEST, NO_FOLD]
DIMS = {"L": 300, "A": 74, "V": 35, "labels": 7}
LENGTHS = {"V": 3, "A": 4, "L": 6}
ROOTS = {"L": "glove_vectors", "A": "COVAREP", "V": "FACET 4.2", "labels": "All Labels"}
# label rows as stored: out of time order, row 2 overlaps rows 0 and 1
LABEL_ROWS = [[5.0, 9.0], [1.0, 4.0], [3.0, 6.0]]


def sdk_metadata(root: str) -> dict:
    """The 13 metadata keys of a deployed SDK file (its template, plus uuid and md5)."""
    meta = {
        "root name": root,
        "computational sequence description": f"{root} features of CMU-MOSEI",
        "dimension names": None,
        "computational sequence version": "1.0",
        "alignment compatible": True,
        "dataset name": "CMU-MOSEI",
        "dataset version": "1.0",
        "creator": "someone",
        "contact": "someone@example.org",
        "featureset bib citation": "@article{x}",
        "dataset bib citation": "@inproceedings{y}",
        "uuid": "00000000-0000-0000-0000-000000000000",
        "md5": None,
    }
    return meta


def write_csd(path: Path, root: str, videos: dict, metadata: dict | None) -> None:
    """The layout of the SDK's write_CSD with deploy()'s gzip level 9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        data = g.create_group("data")
        for vid, (x, t) in videos.items():
            v = data.create_group(vid)
            v.create_dataset("features", data=x, compression="gzip", compression_opts=9)
            v.create_dataset("intervals", data=t, compression="gzip", compression_opts=9)
        if metadata is not None:
            meta = g.create_group("metadata")
            for key, value in metadata.items():
                meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
                meta[key][0] = json.dumps(value)


def label(i: int, row: int) -> float:
    return -2.5 + 0.5 * ((i + 2 * row) % 11)


def make_csd(directory: Path, nested: bool = False, **overrides) -> dict[str, Path]:
    """Four files; ``overrides[key] = (videos, metadata)`` replaces one file's content.

    Video i (of VIDEOS): labels rows LABEL_ROWS (video 0 adds a zero-width row 3 at [7, 7]);
    COVAREP rows [k/10, (k+1)/10], k < 100, value 1000 i + k + 1 (NaN and -inf in columns 1, 2);
    FACET rows [k, k+1], k < 10, value 100 i + k + 1, video 1 has none, video 2 drops k = 4, 5;
    words rows [k/2, (k+1)/2], k < 20, value 10 i + k + 1. Feature rows are stored shuffled.
    """
    rng = np.random.default_rng(0)
    files = {}
    content = {"labels": {}, "A": {}, "V": {}, "L": {}}
    for i, vid in enumerate(VIDEOS):
        rows = LABEL_ROWS + ([[7.0, 7.0]] if i == 0 else [])
        lab = np.zeros((len(rows), DIMS["labels"]))
        lab[:, 0] = [label(i, r) for r in range(len(rows))]
        content["labels"][vid] = (lab, np.array(rows))
        for m, (n, step, scale) in {"A": (100, 0.1, 1000), "V": (10, 1.0, 100), "L": (20, 0.5, 10)}.items():
            k = np.arange(n)
            if m == "V" and i == 2:
                k = k[(k != 4) & (k != 5)]  # dropped frames
            x = np.repeat((scale * i + k + 1.0)[:, None], DIMS[m], axis=1)
            if m == "A":  # noise beyond column 2 makes the compressed chunks as large as real ones
                x[:, 3:] = rng.standard_normal((len(k), DIMS[m] - 3))
                x[3, 1], x[5, 2] = np.nan, -np.inf
            t = np.c_[k / (1 / step), (k + 1) / (1 / step)]
            order = rng.permutation(len(k))
            if not (m == "V" and i == 1):  # video 1 has no FACET
                content[m][vid] = (x[order], t[order])
    for key, rel in sdk_csd.CSD_FILES["mosei"].items():
        path = directory / (rel if nested else Path(rel).name)
        videos, meta = overrides.get(key, (content[key], sdk_metadata(ROOTS[key])))
        write_csd(path, ROOTS[key], videos, meta)
        files[key] = path
    return files


def cfg_for(path: Path | None = None, **block) -> dict:
    sdk = {
        "base_urls": [],
        "path": str(path) if path else None,
        "sha256": {},
        "folds": str(split.standard_path("mosei")),
        "hash_split": False,
    }
    sdk.update(block)
    return {
        "source": "sdk_csd",
        "lengths": dict(LENGTHS),
        "synthetic": {"seed": 1, "n_train": 4, "n_valid": 2, "n_test": 2},
        "mult_pkl": {"urls": [], "path": None, "sha256": None},
        "sdk_csd": sdk,
    }


def prepared(tmp_path: Path, cfg: dict) -> dict:
    raw = acquire(cfg, tmp_path / "raw", progress=False)
    return prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")


# ----------------------------------------------------------------------------- shipped folds


def test_shipped_standard_folds():
    for dataset, sizes in split.STANDARD_FOLD_SIZES.items():
        path = split.standard_path(dataset)
        assert sha256sum(path) == split.STANDARD_SHA256[dataset]
        folds = split.read_folds(path)
        assert {s: len(folds[s]) for s in SPLITS} == sizes
        assert split.is_standard(folds, dataset)
        assert len(set().union(*map(set, folds.values()))) == sum(sizes.values())  # no video twice
    assert "MIT License" in (split.FOLDS_DIR / "README.md").read_text()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"data/folds/*.json"' in pyproject  # shipped as package data


# ----------------------------------------------------------------------------- reading


def test_segments_numbered_as_the_sdk_numbers_them(tmp_path, caplog):
    make_csd(tmp_path / "csd")
    with caplog.at_level(logging.WARNING):
        raw, info = sdk_csd.load(tmp_path / "csd", LENGTHS, STD)
    tr = raw["train"]
    ids = list(tr["id"])
    v0, v1, v2 = TRAIN
    # row order of the labels file, not time order; the zero-width row 3 of video 0 is skipped
    assert ids == [f"{v}[{r}]" for v in sorted(TRAIN) for r in range(3)]
    assert info["zero_width_label_rows_skipped"] == 1
    for i, v in enumerate(TRAIN):
        for r, (s, e) in enumerate(LABEL_ROWS):
            j = ids.index(f"{v}[{r}]")
            assert tr["labels"][j, 0, 0] == pytest.approx(label(i, r))
            # audio: the last 4 of the rows k/10 overlapping [s, e] end at k = 10 e - 1
            np.testing.assert_array_equal(tr["audio"][j, :, 0], 1000 * i + 10 * e - np.arange(3, -1, -1))
            assert tr["lengths"]["A"][j] == 10 * (e - s)
    # overlapping segments share rows: FACET row 3 (value 4) is in [1, 4] and in [3, 6]
    np.testing.assert_array_equal(tr["vision"][ids.index(f"{v0}[1]"), :, 0], [2, 3, 4])
    np.testing.assert_array_equal(tr["vision"][ids.index(f"{v0}[2]"), :, 0], [4, 5, 6])
    # FACET: video 1 missing (zeros, length 0); video 2 dropped frames 4, 5 -> [3, 6] holds row 3 only
    assert (tr["vision"][[ids.index(f"{v1}[{r}]") for r in range(3)]] == 0).all()
    j = ids.index(f"{v2}[2]")
    np.testing.assert_array_equal(tr["vision"][j, :, 0], [0, 0, 204])
    assert tr["lengths"]["V"][j] == 1
    assert info["videos_without_features"] == {"V": 1, "A": 0, "L": 0}
    assert info["videos_in_no_fold"] == 1 and info["videos_in_no_fold_examples"] == [NO_FOLD]
    assert any("1 of 6 labelled videos are in no fold" in r.getMessage() for r in caplog.records)
    assert list(raw["valid"]["id"]) == [f"{VALID[0]}[{r}]" for r in range(3)]


def test_truncation_counted_where_the_cut_happens(tmp_path):
    summary = prepared(tmp_path, cfg_for(make_csd(tmp_path / "csd")["A"].parent))
    tr = summary["splits"]["train"]
    assert summary["n"] == {"train": 9, "valid": 3, "test": 3}
    # audio: 30, 40 and 30 rows per segment > T 4; words: [5, 9] has 8 > 6; FACET: only video 0's
    # [5, 9] (4 > 3): video 1 has none, video 2 dropped frames 4, 5
    assert tr["truncated"] == {"V": 1, "A": 9, "L": 3}
    assert tr["zero_length"] == {"V": 3, "A": 0, "L": 0}
    assert tr["nonfinite"]["A"]["nan"] == 0  # row 3 (NaN) and 5 (-inf) lie before every kept window
    h5 = load_split(tmp_path / "d.h5", "train")
    v2 = sorted(TRAIN).index(TRAIN[2]) * 3 + 2  # video 2, segment [3, 6]: FACET row 3 only
    assert h5.length[v2].tolist() == [1, 4, 6]


def test_standard_folds_are_the_default_and_videos_in_no_fold_are_counted(tmp_path):
    summary = prepared(tmp_path, cfg_for(make_csd(tmp_path / "csd")["A"].parent))
    folds = summary["raw"]["folds"]
    assert folds["kind"] == "file" and folds["standard"] is True
    assert folds["path"] == str(split.standard_path("mosei"))
    assert folds["videos_in_no_fold"] == 1 and folds["fold_videos_without_labels"] == 3227 - 5
    assert split_note(summary) is None
    ids = load_split(tmp_path / "d.h5", "test").segment_id
    assert {i.split("[")[0] for i in ids} == set(TEST)


def test_hash_split_only_on_request(tmp_path, caplog):
    csd = make_csd(tmp_path / "csd")["A"].parent
    with pytest.raises(DataError, match="folds file does not exist"):  # no silent fall-back to a hash
        prepared(tmp_path / "a", cfg_for(csd, folds=str(tmp_path / "absent.json")))
    with caplog.at_level(logging.WARNING):
        summary = prepared(tmp_path / "b", cfg_for(csd, hash_split=True))
    assert summary["raw"]["folds"]["kind"] == "hash" and summary["raw"]["folds"]["standard"] is False
    assert any("not the standard split" in r.getMessage() for r in caplog.records)
    n_videos = {s: len({i.split("[")[0] for i in load_split(tmp_path / "b" / "d.h5", s).segment_id}) for s in SPLITS}
    assert sum(n_videos.values()) == len(VIDEOS)  # the video in no fold is kept by the hash split
    note = split_note(summary)
    assert "hash" in note
    md = to_markdown(_tiny_table(), None, {"device": "cpu", "threads": 1}, "sdk_csd", split=note)
    assert md.splitlines()[0].startswith("# Table 1 — data: `sdk_csd`")
    assert md.splitlines()[0].endswith(" — NOT the standard split")
    assert "The paper's values below are on the standard split" in md


def _tiny_table():
    import pandas as pd

    return pd.DataFrame(
        [
            dict(
                group="",
                network="Student",
                description="no KD",
                n_seeds=1,
                acc_mean=50.0,
                acc_std=0.0,
                paper_acc=51.0,
                f1_mean=49.0,
                f1_std=0.0,
                paper_f1=50.0,
                parameters=10,
                latency_b1_ms=1.0,
            )
        ]
    )


def test_user_folds_file(tmp_path, caplog):
    csd = make_csd(tmp_path / "csd")["A"].parent
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"train": [VALID[0], *TRAIN], "valid": [TEST[0]], "test": [NO_FOLD]}))
    with caplog.at_level(logging.WARNING):
        summary = prepared(tmp_path / "a", cfg_for(csd, folds=str(mine)))
    assert summary["n"] == {"train": 12, "valid": 3, "test": 3}
    assert summary["raw"]["folds"]["standard"] is False and summary["raw"]["folds"]["videos_in_no_fold"] == 0
    assert "differ from the standard" in split_note(summary)
    mine.write_text(json.dumps({"train": TRAIN, "valid": TRAIN[:1], "test": TEST}))
    with pytest.raises(DataError, match=r"mine\.json: video .* is in both 'train' and 'valid'"):
        prepared(tmp_path / "b", cfg_for(csd, folds=str(mine)))
    with pytest.raises(DataError, match="standard folds of CMU-MOSI but data.dataset is 'mosei'"):
        prepared(tmp_path / "c", cfg_for(csd, folds=str(split.standard_path("mosi"))))


def test_old_folds_file_beside_the_csd_files_is_not_ignored_silently(tmp_path):
    csd = make_csd(tmp_path / "csd")["A"].parent
    (csd / "mosei_folds.json").write_text(json.dumps({"train": TRAIN, "valid": VALID, "test": TEST}))
    with pytest.raises(DataError, match=r"mosei_folds\.json: a folds file beside the \.csd files is not read"):
        acquire(cfg_for(csd), tmp_path / "raw")
    shutil.copy(split.standard_path("mosei"), csd / "mosei_folds.json")  # the same folds: fine
    acquire(cfg_for(csd), tmp_path / "raw")


def test_download_in_the_sdk_layout(file_server, tmp_path):
    root, base = file_server
    make_csd(root, nested=True)  # the SDK's sub-folders under its base URL
    cfg = cfg_for(base_urls=[base + "/nothing/", base])
    raw = acquire(cfg, tmp_path / "raw", progress=False)
    assert sorted(p.name for p in raw.iterdir()) == sorted(Path(r).name for r in sdk_csd.CSD_FILES["mosei"].values())
    summary = prepare_dataset(cfg, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["n"] == {"train": 9, "valid": 3, "test": 3} and len(summary["raw"]["sha256"]) == 4
    assert summary["raw"]["csd"]["files"]["A"] == str(raw / "CMU_MOSEI_COVAREP.csd")  # no user path: the download


def test_mosi_file_names(tmp_path):
    for rel in sdk_csd.CSD_FILES["mosi"].values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    assert sorted(p.name for p in sdk_csd.locate(tmp_path, "mosi").values()) == [
        "CMU_MOSI_COVAREP.csd",
        "CMU_MOSI_Opinion_Labels.csd",
        "CMU_MOSI_TimestampedWordVectors.csd",
        "CMU_MOSI_Visual_Facet_42.csd",
    ]


# ----------------------------------------------------------------------------- broken files


def _user_error(tmp_path: Path, csd: Path) -> str:
    """The message of the DataError that preparing the user's directory ``csd`` raises."""
    with pytest.raises(DataError) as exc:
        prepared(tmp_path, cfg_for(csd))
    return str(exc.value)


def test_zeroed_block_names_the_users_file_and_the_video(tmp_path):
    files = make_csd(tmp_path / "csd")
    with h5py.File(files["A"], "r") as f:
        info = f["COVAREP/data"][TRAIN[1]]["features"].id.get_chunk_info(0)
    assert info.size > 5000
    with open(files["A"], "r+b") as f:  # 4 KB of zeros inside one compressed chunk
        f.seek(info.byte_offset + 1000)
        f.write(bytes(4096))
    msg = _user_error(tmp_path / "p", files["A"].parent)
    assert msg.startswith(f"{files['A']}: video {TRAIN[1]}: cannot be read"), msg
    assert "raw" not in msg.replace(str(files["A"]), "")


def test_truncated_file_names_the_users_file(tmp_path):
    files = make_csd(tmp_path / "csd")
    raw = acquire(cfg_for(files["A"].parent), tmp_path / "raw")  # links the user's files into raw/
    size = files["V"].stat().st_size
    with open(files["V"], "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataError) as exc:
        prepare_dataset(cfg_for(files["A"].parent), raw, tmp_path / "d.h5", tmp_path / "d.json")
    msg = str(exc.value)
    assert msg.startswith(f"{files['V']}: cannot be opened as HDF5"), msg
    assert str(raw) not in msg


def _labels_with(bad_value: float) -> dict:
    videos = {}
    for i, vid in enumerate(VIDEOS):
        lab = np.zeros((3, 7))
        lab[:, 0] = [label(i, r) for r in range(3)]
        if vid == TRAIN[2]:
            lab[1, 0] = bad_value
        videos[vid] = (lab, np.array(LABEL_ROWS))
    return videos


def test_label_outside_range_names_file_and_video(tmp_path):
    files = make_csd(tmp_path / "csd", labels=(_labels_with(3.5), sdk_metadata("All Labels")))
    msg = _user_error(tmp_path / "p", files["labels"].parent)
    assert msg.startswith(f"{files['labels']}: video {TRAIN[2]}: 1 sentiment labels are NaN or outside [-3, 3]"), msg
    assert "row 1: 3.5" in msg
    files = make_csd(tmp_path / "csd2", labels=(_labels_with(np.nan), sdk_metadata("All Labels")))
    assert f"video {TRAIN[2]}" in _user_error(tmp_path / "p2", files["labels"].parent)


def test_metadata_required_and_recommended(tmp_path, caplog):
    meta = sdk_metadata("COVAREP")
    files = make_csd(tmp_path / "a")
    with h5py.File(files["A"]) as f:
        videos = {v: (f["COVAREP/data"][v]["features"][()], f["COVAREP/data"][v]["intervals"][()]) for v in VIDEOS}
    # no metadata group: the SDK's reader fails, so does this one
    files = make_csd(tmp_path / "b", A=(videos, None))
    msg = _user_error(tmp_path / "pb", files["A"].parent)
    assert msg == f"{files['A']}: root group 'COVAREP' has no 'metadata' group"
    # no root name: required
    files = make_csd(tmp_path / "c", A=(videos, {k: v for k, v in meta.items() if k != "root name"}))
    assert "metadata lacks ['root name'], which the SDK's format requires" in _user_error(
        tmp_path / "pc", files["A"].parent
    )
    # recommended keys missing: a warning, and the run goes on
    files = make_csd(tmp_path / "d", A=(videos, {"root name": "covarep"}))
    with caplog.at_level(logging.WARNING):
        summary = prepared(tmp_path / "pd", cfg_for(files["A"].parent))
    warned = "\n".join(summary["raw"]["csd"]["warnings"])
    assert f"{files['A']}: metadata lacks keys the SDK recommends: ['computational sequence description'" in warned
    assert all(w in caplog.text for w in summary["raw"]["csd"]["warnings"])  # logged as well


def test_label_columns(tmp_path):
    def labels(width: int) -> dict:
        return {v: (np.full((3, width), 0.5), np.array(LABEL_ROWS)) for v in VIDEOS}

    files = make_csd(tmp_path / "a", labels=(labels(0), sdk_metadata("All Labels")))
    assert "labels have 0 columns; column 0 (sentiment) is required" in _user_error(tmp_path / "pa", files["A"].parent)
    files = make_csd(tmp_path / "b", labels=(labels(1), sdk_metadata("All Labels")))
    summary = prepared(tmp_path / "pb", cfg_for(files["A"].parent))
    assert any("labels have 1 columns; the SDK's mosei labels have 7" in w for w in summary["raw"]["csd"]["warnings"])


def test_structure_errors_name_file_and_video(tmp_path):
    files = make_csd(tmp_path / "a", A=({v: (np.ones((2, 74)), np.zeros((3, 2))) for v in VIDEOS}, sdk_metadata("x")))
    msg = _user_error(tmp_path / "pa", files["A"].parent)
    assert re.match(rf"{re.escape(str(files['A']))}: video \S+ has features \(2, 74\) and intervals \(3, 2\)", msg)
    bad = {v: (np.ones((2, 74)), np.array([[0.0, 1.0], [2.0, 1.0]])) for v in VIDEOS}
    files = make_csd(tmp_path / "b", A=(bad, sdk_metadata("x")))
    assert "row 1: interval [2.0, 1.0] ends before it starts" in _user_error(tmp_path / "pb", files["A"].parent)


# ----------------------------------------------------------------------------- pipelines


def _project(tmp_path: Path, sdk: dict) -> tuple[Path, dict]:
    params = tiny_params()
    params["data"]["source"] = "sdk_csd"
    params["data"]["lengths"] = dict(LENGTHS)
    params["data"]["sdk_csd"].update(sdk)
    return make_project(tmp_path / "proj", params), params


def _write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.e2e
def test_snakemake_folds_file_added_after_a_first_run(tmp_path):
    csd = make_csd(tmp_path / "csd")["A"].parent
    project, params = _project(tmp_path, {"path": str(csd), "hash_split": True})
    target = "data/prepared/sdk_csd.summary.json"
    out = run(["snakemake", "--cores", "1", target], project)
    assert "NOT the standard split" in out  # on the console, not only in the log
    assert json.loads((project / target).read_text())["raw"]["folds"]["kind"] == "hash"

    # the user adds a folds file (here the standard folds) and names it
    shutil.copy(split.standard_path("mosei"), project / "my_folds.json")
    params["data"]["sdk_csd"].update({"folds": "my_folds.json", "hash_split": False})
    _write_params(project, params)
    out = run(["snakemake", "--cores", "1", target], project)
    assert "NOT the standard split" not in out
    folds = json.loads((project / target).read_text())["raw"]["folds"]
    assert folds["standard"] is True and folds["path"] == "my_folds.json"
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1", target], project)

    # the file is an input: editing it (no params change) re-runs prepare
    mine = json.loads((project / "my_folds.json").read_text())
    mine["valid"].append(mine["test"].pop())
    (project / "my_folds.json").write_text(json.dumps(mine))
    out = run(["snakemake", "-n", "--cores", "1", target], project)
    assert re.findall(r"^rule (\w+):", out, flags=re.M) == ["prepare"], out


@pytest.mark.e2e
def test_dvc_folds_file_is_a_dependency(tmp_path):
    csd = make_csd(tmp_path / "csd")["A"].parent
    shutil.copy(split.standard_path("mosei"), tmp_path / "my_folds.json")
    project, params = _project(tmp_path, {"path": str(csd), "folds": str(tmp_path / "my_folds.json")})
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "repro", "prepare"], project)
    summary = json.loads((project / "data/prepared/sdk_csd.summary.json").read_text())
    assert summary["raw"]["folds"]["standard"] is True
    assert "up to date" in run(["dvc", "status", "prepare"], project)
    mine = json.loads((tmp_path / "my_folds.json").read_text())
    mine["valid"].append(mine["test"].pop())
    (tmp_path / "my_folds.json").write_text(json.dumps(mine))
    assert "my_folds.json" in run(["dvc", "status", "prepare"], project)
    out = run(["dvc", "repro", "prepare"], project)
    assert "Running stage 'prepare'" in out
    summary = json.loads((project / "data/prepared/sdk_csd.summary.json").read_text())
    assert summary["raw"]["folds"]["standard"] is False
