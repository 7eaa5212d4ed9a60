"""The two data steps the command line runs: ``acquire`` (raw input) and ``prepare_dataset``.

``data_cfg`` is the ``data:`` section of params.yaml (already schema-validated):
``source`` (synthetic | mult_pkl | mmsa_pkl | sdk_csd), ``dataset`` (mosei | mosi),
``label_rule`` (round | sdk), ``lengths`` {V, A, L} and one block per source.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np

from mmdistill.data import catalogue, mmsa_pkl, mult_pkl, prepare, sdk_csd, split, synthetic
from mmdistill.data.dataset import DataError
from mmdistill.data.download import fetch, sha256sum
from mmdistill.io import atomic_path, write_json

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "mult_pkl", "mmsa_pkl", "sdk_csd")
SYNTHETIC_NAME = "mosei_synthetic.pkl"
MULT_PKL_NAME = "mosei_senti_data_noalign.pkl"
OLD_FOLDS_NAME = (
    "mosei_folds.json"  # read from beside the .csd files by earlier versions; now named by data.sdk_csd.folds
)


def acquire(data_cfg: dict, raw_dir: str | Path, progress: bool = True) -> Path:
    """Produce the raw input of the configured source under ``raw_dir``; return its path.

    synthetic: generate and write ``raw_dir/mosei_synthetic.pkl`` (MulT pickle layout).
    mult_pkl: download ``raw_dir/mosei_senti_data_noalign.pkl``, or take the local ``path``.
    sdk_csd: download the four ``.csd`` files into ``raw_dir`` and return ``raw_dir``, or take
    them from the local ``path`` directory.

    A local copy is checked (existence, optional sha256) and hard-linked into ``raw_dir`` (copied
    where a link is impossible, which is logged), so the raw input always lies in ``raw_dir``,
    where the pipelines (and DVC) expect it.
    """
    raw_dir = Path(raw_dir)
    source = _source(data_cfg)
    if source == "synthetic":
        cfg = data_cfg["synthetic"]
        scenario = cfg.get("scenario", "mosei_like")
        if scenario not in synthetic.SCENARIOS:
            raise ValueError(f"data.synthetic.scenario: unknown {scenario!r}; expected one of {synthetic.SCENARIOS}")
        make = synthetic.generate if scenario == "mosei_like" else synthetic.generate_known_answer
        raw = make(
            cfg["n_train"],
            cfg["n_valid"],
            cfg["n_test"],
            data_cfg["lengths"],
            np.random.default_rng(cfg["seed"]),
        )
        out = raw_dir / SYNTHETIC_NAME
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            pickle.dump(raw, f, protocol=pickle.HIGHEST_PROTOCOL)
        return out
    if source in ("mult_pkl", "mmsa_pkl"):
        cfg = data_cfg[source]
        dest = raw_dir / raw_file_name(data_cfg)
        sha256 = expected_sha256(data_cfg)
        if cfg.get("path"):
            return _link_into(_local_file(Path(cfg["path"]).expanduser(), sha256), dest)
        if not cfg.get("urls"):
            raise DataError(
                f"data.{source}: neither a local `path` nor `urls` to download from; "
                "see docs/bring-your-own-data.md for where to get the file"
            )
        return fetch(cfg["urls"], dest, sha256, progress)
    cfg = data_cfg["sdk_csd"]
    dataset = dataset_of(data_cfg)
    checksums = cfg.get("sha256") or {}
    if cfg.get("path"):
        directory = Path(cfg["path"]).expanduser()
        _check_old_folds_file(directory, cfg)
        for key, path in sdk_csd.locate(directory, dataset).items():
            _link_into(_local_file(path, _csd_checksum(checksums, key, dataset)), raw_dir / path.name)
        return raw_dir
    for key, rel in sdk_csd.CSD_FILES[dataset].items():
        urls = [base.rstrip("/") + "/" + rel for base in cfg["base_urls"]]
        fetch(urls, raw_dir / Path(rel).name, _csd_checksum(checksums, key, dataset), progress)
    return raw_dir


def dataset_of(data_cfg: dict) -> str:
    dataset = data_cfg.get("dataset", "mosei")
    if dataset not in catalogue.DATASETS:
        raise ValueError(f"data.dataset must be one of {catalogue.DATASETS}, got {dataset!r}")
    return dataset


def raw_file_name(data_cfg: dict) -> str:
    """Name of the raw pickle of a ``mult_pkl`` or ``mmsa_pkl`` source under the raw folder."""
    return catalogue.raw_file_name(_source(data_cfg), dataset_of(data_cfg))


def expected_sha256(data_cfg: dict) -> str | None:
    """The configured checksum of the raw pickle (``mmsa_pkl``: per dataset), or None."""
    source = _source(data_cfg)
    value = data_cfg[source].get("sha256")
    if isinstance(value, dict):
        value = value.get(dataset_of(data_cfg))
    return value.lower() if value else None


def _check_old_folds_file(directory: Path, cfg: dict) -> None:
    """A folds file beside the .csd files is not read: refuse to ignore it silently when it differs."""
    old = directory / OLD_FOLDS_NAME
    if not old.is_file():
        return
    used = split.folds_file(cfg)
    if used is not None and used.is_file() and split.read_folds(old) == split.read_folds(used):
        return
    raise DataError(
        f"{old}: a folds file beside the .csd files is not read; the folds come from data.sdk_csd.folds "
        f"(now: {'the hash split' if used is None else used}). To use this file, set data.sdk_csd.folds: {old} "
        "(and hash_split: false); otherwise move it away"
    )


def _link_into(src: Path, dst: Path) -> Path:
    """Hard-link ``src`` to ``dst`` (atomically replacing it); copy where linking is impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return dst
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError as exc:
            log.info("copying %s to %s (a hard link is impossible: %s)", src, dst, exc)
            shutil.copyfile(src, tmp)
    return dst


def prepare_dataset(data_cfg: dict, raw_path: str | Path, out_h5: str | Path, summary_json: str | Path) -> dict:
    """Read the raw input, prepare it, write the HDF5 and the JSON summary; return the summary.

    See :mod:`mmdistill.data.prepare` for the rules. The summary records the source, lengths,
    rounding rule, per-split counts (samples, classes, NaN/inf, empty and cut sequences) and the
    sha256 of the raw input file(s); for ``sdk_csd`` also the folds (``raw.folds``: which file,
    whether they are the standard ones, videos in no fold) and the reader's counts (``raw.csd``).
    """
    raw_path = Path(raw_path)
    source = _source(data_cfg)
    dataset = dataset_of(data_cfg)
    lengths = data_cfg["lengths"]
    extra: dict = {}
    padding = "left"
    if source in ("synthetic", "mult_pkl"):
        raw = mult_pkl.load(raw_path)
        digests = {raw_path.name: sha256sum(raw_path)}
    elif source == "mmsa_pkl":
        raw, extra["text_lengths"] = mmsa_pkl.load(raw_path)
        digests = {raw_path.name: sha256sum(raw_path)}
        padding = "right"
    else:
        raw, digests, extra = _read_csd(data_cfg, raw_path)
    if source in ("mult_pkl", "mmsa_pkl"):
        extra["verified"] = _verification(data_cfg, digests[raw_path.name])
    label_rule = data_cfg.get("label_rule", "round")
    arrays, summary = prepare.prepare(raw, lengths, source, label_rule=label_rule, padding=padding)
    del raw
    summary["dataset"] = dataset if source != "synthetic" else "synthetic (MOSEI-like shapes and labels)"
    summary["raw"] = {"path": str(raw_path), "sha256": digests, **extra}
    summary["source_config"] = data_cfg[source]
    expected = None if source == "synthetic" else catalogue.expected_sizes(dataset, source)
    verdict, warnings = catalogue.compare_sizes(summary["n"], expected, f"{dataset} through {source}")
    for line in warnings:
        log.warning("%s (a subset is fine; a different file is not: check the path)", line)
    summary["expected_sizes"] = {"expected": expected, "read": summary["n"], "verdict": verdict, "warnings": warnings}
    prepare.write_h5(arrays, summary, out_h5)
    write_json(summary_json, summary)
    log.info("prepared %s: %s samples per split -> %s", source, summary["n"], out_h5)
    return summary


def _read_csd(data_cfg: dict, raw_dir: Path) -> tuple[dict, dict[str, str], dict]:
    """The ``sdk_csd`` source: raw arrays, the files' sha256 and what the summary records of folds and files."""
    cfg, dataset = data_cfg["sdk_csd"], dataset_of(data_cfg)
    folds, folds_info = _folds(cfg, dataset)
    raw, info = sdk_csd.load(raw_dir, data_cfg["lengths"], folds, dataset, _user_files(cfg, dataset))
    for key in ("videos_in_no_fold", "videos_in_no_fold_examples", "fold_videos_without_labels"):
        if key in info:
            folds_info[key] = info.pop(key)
    digests = {p.name: sha256sum(p) for p in sdk_csd.locate(raw_dir, dataset).values()}
    return raw, digests, {"folds": folds_info, "csd": info}


def _user_files(cfg: dict, dataset: str) -> dict[str, Path] | None:
    """The user's own .csd files (given as ``path``), which messages name instead of their links in raw/."""
    if not cfg.get("path"):
        return None
    try:
        return sdk_csd.locate(Path(cfg["path"]).expanduser(), dataset)
    except DataError:  # moved since the download step linked them: name the files read
        log.info("%s no longer holds the .csd files; messages name the copies read", cfg["path"])
        return None


def _source(data_cfg: dict) -> str:
    source = data_cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
    return source


def _local_file(path: Path, sha256: str | None) -> Path:
    """A user-supplied raw file: it must exist and match the checksum when one is given
    (without one, a warning says the file is unverified)."""
    if not path.is_file():
        raise DataError(f"{path}: configured raw data file does not exist")
    if sha256:
        actual = sha256sum(path)
        if actual != sha256.lower():
            known = catalogue.PUBLISHED_SHA256.get(actual)
            hint = f"; it is the published {known}" if known else ""
            raise DataError(f"{path}: sha256 mismatch: expected {sha256.lower()}, got {actual}{hint}")
    else:
        log.warning("%s: no sha256 configured to check it against: the file is unverified", path)
    return path


def _verification(data_cfg: dict, actual: str) -> str:
    """What the summary says about the raw pickle's checksum."""
    known = catalogue.PUBLISHED_SHA256.get(actual)
    if known and "SIMS" in known:
        raise DataError(f"{known}: CH-SIMS labels lie in [-1, 1] and 7-class accuracy is not defined for them")
    expected = expected_sha256(data_cfg)
    if expected and actual == expected:
        return f"matches the configured sha256{f' (published for {known})' if known else ''}"
    if expected:
        raise DataError(
            f"{data_cfg['source']}: the raw file's sha256 {actual} differs from the configured {expected}: "
            "run the `download` step again"
        )
    if known:
        return f"unverified against the configuration, but it is the published {known}"
    return "unverified: no sha256 configured and not a published file"


def _csd_checksum(checksums: dict[str, str], key: str, dataset: str) -> str | None:
    """Checksum of one .csd file, keyed by its file name or its path relative to the base URL."""
    rel = sdk_csd.CSD_FILES[dataset][key]
    return checksums.get(Path(rel).name) or checksums.get(rel)


def _folds(cfg: dict, dataset: str) -> tuple[dict[str, list[str]] | str, dict]:
    """The folds of the ``sdk_csd`` source and how the summary describes them.

    The folds file named by ``data.sdk_csd.folds`` (default: the standard folds shipped with the
    package), or ``"hash"`` when ``data.sdk_csd.hash_split`` asks for the hash split.
    """
    path = split.folds_file(cfg)
    if path is None:
        message = split.hash_description(dataset)
        log.warning("data.sdk_csd.hash_split is set: %s", message)
        return "hash", {"kind": "hash", "standard": False, "description": message}
    folds = split.read_folds(path)
    split.check_dataset(path, dataset)
    standard = split.is_standard(folds, dataset)
    if standard:
        description = f"the standard {split.DATASET_NAME[dataset]} folds (CMU-MultimodalSDK), from {path}"
    else:
        name = split.DATASET_NAME[dataset]
        description = f"folds from {path}, which differ from the standard {name} folds: {split.NOT_STANDARD}"
        log.warning("%s", description)
    info = {
        "kind": "file",
        "standard": standard,
        "path": str(path),
        "sha256": sha256sum(path),
        "description": description,
    }
    return folds, info
