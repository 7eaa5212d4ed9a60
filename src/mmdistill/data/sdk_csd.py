"""Reader for CMU-MultimodalSDK computational sequences (``.csd``) of CMU-MOSEI.

A ``.csd`` file is HDF5 with one root group: ``/<root>/data/<video_id>/features`` (m x n) and
``/<root>/data/<video_id>/intervals`` (m x 2, start and end in seconds), plus
``/<root>/metadata/...`` (Zadeh et al. 2018, CMU-MultiComp-Lab/CMU-MultimodalSDK).

Segments: every row of the label sequence (``CMU_MOSEI_Labels.csd``, column 0 = sentiment) is
one segment, named ``<video_id>[<row>]`` as the SDK names them, with its interval ``[s, e]``.
For each modality the segment takes, in time order, the feature rows of the same video whose
interval overlaps it (``start < e and end > s``; a zero-width row counts when
``s <= start < e``), then keeps the last ``T`` rows or left-pads with zeros, as
:mod:`mmdistill.data.prepare` does for MulT's pickles. A video missing from a modality gives
all-zero sequences (true length 0; prepare counts them).

Folds: the standard MOSEI folds (2249 / 300 / 678 videos) are listed in the SDK
(``mmsdk/mmdatasdk/dataset/standard_datasets/CMU_MOSEI/cmu_mosei_std_folds.py``) and are not
shipped here. Pass them as ``folds`` (``{"train": [...], "valid": [...], "test": [...]}``,
e.g. from a JSON file written from that module; videos in no fold are dropped). Without
``folds`` every video is assigned by a hash of its id, in the standard proportions: the split
is deterministic and leaves whole videos in one split, but it is not the standard split and
results on it are not comparable with published ones (a warning is logged).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import h5py
import numpy as np

from mmdistill.data import SPLITS
from mmdistill.data.dataset import DataError
from mmdistill.modalities import FEATURE_DIM, FILE_KEY, MODALITIES

log = logging.getLogger(__name__)

# paths relative to the SDK base URL; the files may also sit flat in one directory
CSD_FILES = {
    "L": "language/CMU_MOSEI_TimestampedWordVectors.csd",
    "A": "acoustic/CMU_MOSEI_COVAREP.csd",
    "V": "visual/CMU_MOSEI_VisualFacet42.csd",
    "labels": "labels/CMU_MOSEI_Labels.csd",
}
SENTIMENT_COLUMN = 0
STANDARD_FOLD_SIZES = {"train": 2249, "valid": 300, "test": 678}
HASH_FOLDS = "sha256 of the video id, standard proportions 2249/300/678 (not the standard folds)"


def locate(directory: str | Path) -> dict[str, Path]:
    """Paths of the four ``.csd`` files, flat in ``directory`` or under their SDK sub-folders."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory holding the MOSEI .csd files")
    found, missing = {}, []
    for key, rel in CSD_FILES.items():
        for cand in (directory / Path(rel).name, directory / rel):
            if cand.is_file():
                found[key] = cand
                break
        else:
            missing.append(Path(rel).name)
    if missing:
        raise DataError(f"{directory}: missing .csd files {missing}")
    return found


def hash_fold(video_id: str) -> str:
    """Deterministic split of a video by the sha256 of its id, in the standard proportions."""
    u = int(hashlib.sha256(video_id.encode()).hexdigest()[:16], 16) / 2**64
    total = sum(STANDARD_FOLD_SIZES.values())
    if u < STANDARD_FOLD_SIZES["train"] / total:
        return "train"
    if u < (STANDARD_FOLD_SIZES["train"] + STANDARD_FOLD_SIZES["valid"]) / total:
        return "valid"
    return "test"


def load(
    directory: str | Path,
    lengths: dict[str, int],
    folds: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Read the four ``.csd`` files into the MulT pickle layout (see the module docstring)."""
    paths = locate(directory)
    fold_of = _fold_map(folds)
    if fold_of is None:
        log.warning("no MOSEI folds given: splitting videos by %s", HASH_FOLDS)
    with _open(paths["labels"]) as flab, _open(paths["L"]) as fl, _open(paths["A"]) as fa, _open(paths["V"]) as fv:
        labels = _data(flab, paths["labels"])
        feats = {"L": _data(fl, paths["L"]), "A": _data(fa, paths["A"]), "V": _data(fv, paths["V"])}
        acc = {s: {k: [] for k in (*FILE_KEY.values(), "labels", "id")} for s in SPLITS}
        absent = {m: 0 for m in MODALITIES}
        dropped = 0
        for vid in sorted(labels.keys()):
            split = hash_fold(vid) if fold_of is None else fold_of.get(vid)
            if split is None:
                dropped += 1
                continue
            lab_x, lab_t = _read_video(labels[vid], paths["labels"], vid)
            if lab_x.shape[1] <= SENTIMENT_COLUMN:
                raise DataError(f"{paths['labels']}: video {vid} has no sentiment column")
            mods = {}
            for m in MODALITIES:
                if vid in feats[m]:
                    mods[m] = _read_video(feats[m][vid], paths[m], vid, FEATURE_DIM[m])
                else:
                    absent[m] += 1
                    mods[m] = None
            a = acc[split]
            for j, (s, e) in enumerate(lab_t):
                for m in MODALITIES:
                    a[FILE_KEY[m]].append(_segment(mods[m], s, e, lengths[m], FEATURE_DIM[m]))
                a["labels"].append(lab_x[j, SENTIMENT_COLUMN])
                a["id"].append(f"{vid}[{j}]")
    if dropped:
        log.info("%d labelled videos are in no fold and were dropped", dropped)
    for m in MODALITIES:
        if absent[m]:
            log.warning("%d labelled videos have no %s features (%s)", absent[m], FILE_KEY[m], paths[m].name)
    out = {}
    for split in SPLITS:
        a = acc[split]
        if not a["id"]:
            raise DataError(f"{directory}: no segment falls in split '{split}'")
        out[split] = {FILE_KEY[m]: np.stack(a[FILE_KEY[m]]) for m in MODALITIES}
        out[split]["labels"] = np.asarray(a["labels"], dtype=np.float32).reshape(-1, 1, 1)
        out[split]["id"] = np.array(a["id"])
    return out


def _fold_map(folds: dict[str, list[str]] | None) -> dict[str, str] | None:
    if folds is None:
        return None
    missing = [s for s in SPLITS if s not in folds]
    if missing:
        raise DataError(f"folds lack splits {missing} (has: {sorted(folds)})")
    fold_of: dict[str, str] = {}
    for split in SPLITS:
        for vid in folds[split]:
            if vid in fold_of and fold_of[vid] != split:
                raise DataError(f"folds: video {vid!r} is in both '{fold_of[vid]}' and '{split}'")
            fold_of[vid] = split
    return fold_of


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot be opened as HDF5 ({exc})") from exc


def _data(f: h5py.File, path: Path) -> h5py.Group:
    roots = list(f.keys())
    if len(roots) != 1:
        raise DataError(f"{path}: expected one root group, found {roots}")
    root = f[roots[0]]
    if "data" not in root:
        raise DataError(f"{path}: root group '{roots[0]}' has no 'data' group")
    return root["data"]


def _read_video(g: h5py.Group, path: Path, vid: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (m, n) and intervals (m, 2) of one video, sorted by start time."""
    if "features" not in g or "intervals" not in g:
        raise DataError(f"{path}: video {vid} lacks 'features' or 'intervals'")
    x = np.asarray(g["features"][...], dtype=np.float32)
    t = np.asarray(g["intervals"][...], dtype=np.float64)
    if x.ndim != 2 or t.shape != (x.shape[0], 2):
        raise DataError(
            f"{path}: video {vid} has features {x.shape} and intervals {t.shape}; expected (m, n) and (m, 2)"
        )
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{path}: video {vid} features have {x.shape[1]} columns; expected {dim}")
    order = np.argsort(t[:, 0], kind="stable")
    return x[order], t[order]


def _segment(
    video: tuple[np.ndarray, np.ndarray] | None,
    s: float,
    e: float,
    T: int,
    dim: int,
) -> np.ndarray:
    """Feature rows of a video overlapping [s, e], last T kept, left zero-padded: (T, dim)."""
    out = np.zeros((T, dim), dtype=np.float32)
    if video is None:
        return out
    x, t = video
    start, end = t[:, 0], t[:, 1]
    hit = (start < e) & ((end > s) | ((end == start) & (start >= s)))
    rows = x[hit][-T:]  # (<=T, dim)
    if len(rows):
        out[T - len(rows) :] = rows
    return out
