"""Checksums are compared, not only recorded: the summary's sha256 of the raw input is the
file's own, and a configured sha256 (the MulT pickle's, each .csd file's) rejects other bytes,
whether downloaded or taken from a local path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mmdistill.data import sdk_csd
from mmdistill.data.acquire import acquire, prepare_dataset
from mmdistill.data.dataset import DataError
from mmdistill.data.download import DownloadError
from tests.test_data_prepare import SYN_CFG
from tests.test_data_sdk_csd import cfg_for as csd_cfg
from tests.test_data_sdk_csd import make_csd
from tests.test_data_sources import cfg_for, dump, mult_raw


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_summary_records_the_raw_files_own_sha256(tmp_path):
    raw = acquire(SYN_CFG, tmp_path / "raw", progress=False)
    summary = prepare_dataset(SYN_CFG, raw, tmp_path / "d.h5", tmp_path / "d.json")
    assert summary["raw"]["sha256"] == {"mosei_synthetic.pkl": sha256_of(raw)}


def test_summary_records_each_csd_files_own_sha256(tmp_path):
    make_csd(tmp_path / "csd")
    cfg = csd_cfg(tmp_path / "csd")
    raw_dir = acquire(cfg, tmp_path / "raw")
    summary = prepare_dataset(cfg, raw_dir, tmp_path / "d.h5", tmp_path / "d.json")
    files = sorted(raw_dir.glob("*.csd"))
    assert len(files) == len(sdk_csd.CSD_FILES["mosei"])
    assert summary["raw"]["sha256"] == {p.name: sha256_of(p) for p in files}


def test_mult_pkl_url_checksum_is_enforced(file_server, tmp_path):
    root, base = file_server
    pkl = dump(mult_raw(), root / "mosei.pkl")
    good = sha256_of(pkl)
    with pytest.raises(DownloadError, match=r"(?s)mosei_senti_data_noalign\.pkl.*sha256 mismatch"):
        acquire(cfg_for("mult_pkl", urls=[base + "/mosei.pkl"], sha256="ab" * 32), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "mosei_senti_data_noalign.pkl").exists()
    # the right checksum, in upper case as some mirrors list it, is accepted
    got = acquire(cfg_for("mult_pkl", urls=[base + "/mosei.pkl"], sha256=good.upper()), tmp_path / "ok", progress=False)
    assert sha256_of(got) == good


@pytest.mark.parametrize("keyed_by", ["name", "relative path"])
def test_each_csd_checksum_is_enforced_on_download(file_server, tmp_path, keyed_by):
    root, base = file_server
    make_csd(root, nested=True)
    rels = list(sdk_csd.CSD_FILES["mosei"].values())
    key = (lambda rel: Path(rel).name) if keyed_by == "name" else (lambda rel: rel)
    sums = {key(rel): sha256_of(root / rel) for rel in rels}
    out = acquire(csd_cfg(base_urls=[base], sha256=sums), tmp_path / "ok", progress=False)
    assert {p.name: sha256_of(p) for p in out.glob("*.csd")} == {Path(r).name: sums[key(r)] for r in rels}
    for i, rel in enumerate(rels):  # any one wrong checksum stops the download, naming its file
        wrong = {**sums, key(rel): "0" * 64}
        with pytest.raises(DownloadError, match=rf"(?s){Path(rel).name}.*sha256 mismatch"):
            acquire(csd_cfg(base_urls=[base], sha256=wrong), tmp_path / f"bad{i}", progress=False)


def test_each_csd_checksum_is_enforced_on_a_local_copy(tmp_path):
    make_csd(tmp_path / "csd")
    files = {p.name: p for p in (tmp_path / "csd").glob("*.csd")}
    sums = {n: sha256_of(p) for n, p in files.items()}
    acquire(csd_cfg(tmp_path / "csd", sha256=sums), tmp_path / "ok")
    for name in files:
        with pytest.raises(DataError, match=rf"{name}: sha256 mismatch"):
            acquire(csd_cfg(tmp_path / "csd", sha256={**sums, name: "f" * 64}), tmp_path / "x")


def test_mult_pkl_local_copy_with_the_right_checksum_is_taken(tmp_path):
    path = dump(mult_raw(), tmp_path / "local.pkl")
    got = acquire(cfg_for("mult_pkl", path=str(path), sha256=sha256_of(path).upper()), tmp_path / "raw")
    assert got.read_bytes() == path.read_bytes()
