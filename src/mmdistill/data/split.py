"""Which video goes to train, valid or test: the standard folds, a user's folds file, or a hash.

The standard folds of CMU-MOSEI (2,249 / 300 / 678 videos) and CMU-MOSI (52 / 10 / 31) ship
with the package (``mmdistill/data/folds/``, converted to JSON from the CMU-MultimodalSDK's
``cmu_mosei_std_folds.py`` and ``cmu_mosi_std_folds.py``, MIT licence; see the README there).
A folds file is ``{"train": [video ids], "valid": [...], "test": [...]}``.

The hash split (:func:`hash_fold`) assigns each video by the sha256 of its id in the standard
proportions. It runs only when asked for (``data.sdk_csd.hash_split: true``): it keeps whole
videos in one split and is deterministic, but it is not the standard split, so results on it
cannot be compared with published ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmdistill.data import SPLITS
from mmdistill.data.dataset import DataError
from mmdistill.data.download import sha256sum

FOLDS_DIR = Path(__file__).resolve().parent / "folds"
STANDARD_FILE = {"mosei": "mosei_std_folds.json", "mosi": "mosi_std_folds.json"}
STANDARD_SHA256 = {
    "mosei": "e114dcf34066a9b3f5e1d43bf3b5cbec8668a2b4916cedb781d05f9b2e5f8e04",
    "mosi": "c47a3acd69060633fcc088ab12cb8ef770a7f22ca4be1c6f97eaee05e9da5f8e",
}
STANDARD_FOLD_SIZES = {
    "mosei": {"train": 2249, "valid": 300, "test": 678},
    "mosi": {"train": 52, "valid": 10, "test": 31},
}
DATASET_NAME = {"mosei": "CMU-MOSEI", "mosi": "CMU-MOSI"}
NOT_STANDARD = "not the standard split: results cannot be compared with published ones (e.g. the paper's)"


def standard_path(dataset: str) -> Path:
    """The shipped standard folds file of ``dataset`` (``mosei`` or ``mosi``)."""
    if dataset not in STANDARD_FILE:
        raise ValueError(f"no standard folds for data set {dataset!r} (known: {sorted(STANDARD_FILE)})")
    return FOLDS_DIR / STANDARD_FILE[dataset]


def folds_file(sdk_cfg: dict, root: str | Path = ".") -> Path | None:
    """The folds file the ``sdk_csd`` source reads (``None`` when the hash split is asked for).

    ``sdk_cfg`` is ``data.sdk_csd`` of params.yaml; a relative ``folds`` path is taken from ``root``.
    """
    if sdk_cfg.get("hash_split"):
        return None
    folds = sdk_cfg.get("folds")
    if not folds:
        raise DataError("data.sdk_csd.folds is not set: name a folds file or set data.sdk_csd.hash_split: true")
    return Path(root) / Path(folds).expanduser()


def read_folds(path: str | Path) -> dict[str, list[str]]:
    """Read and check a folds file: three lists of video ids, no video in two folds."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: folds file does not exist")
    try:
        folds = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: folds file is not valid JSON ({exc})") from exc
    if not isinstance(folds, dict) or not all(isinstance(folds.get(s), list) for s in SPLITS):
        raise DataError(f"{path}: expected {{'train': [video ids], 'valid': [...], 'test': [...]}}")
    fold_of: dict[str, str] = {}
    for split in SPLITS:
        for vid in folds[split]:
            if not isinstance(vid, str):
                raise DataError(f"{path}: fold '{split}' holds {vid!r}; video ids are strings")
            if vid in fold_of and fold_of[vid] != split:
                raise DataError(f"{path}: video {vid!r} is in both '{fold_of[vid]}' and '{split}'")
            fold_of[vid] = split
    return {s: list(folds[s]) for s in SPLITS}


def check_dataset(path: str | Path, dataset: str) -> None:
    """A shipped standard folds file must be the one of ``dataset``; the shipped ones must be intact."""
    path = Path(path)
    digest = sha256sum(path)
    for other, expected in STANDARD_SHA256.items():
        if path.name == STANDARD_FILE[other] and path.resolve().parent == FOLDS_DIR and digest != expected:
            raise DataError(
                f"{path}: the shipped standard folds file was modified (sha256 {digest}, expected {expected})"
            )
        if digest == expected and other != dataset:
            raise DataError(
                f"{path}: these are the standard folds of {DATASET_NAME[other]} but data.dataset is {dataset!r}; "
                f"set data.sdk_csd.folds to {standard_path(dataset)}"
            )


def is_standard(folds: dict[str, list[str]], dataset: str) -> bool:
    """Whether ``folds`` assign exactly the videos of the standard folds of ``dataset``."""
    std = json.loads(standard_path(dataset).read_text())
    return all(set(folds[s]) == set(std[s]) for s in SPLITS)


def hash_fold(video_id: str, dataset: str = "mosei") -> str:
    """Split of a video by the sha256 of its id, in the proportions of the standard folds."""
    sizes = STANDARD_FOLD_SIZES[dataset]
    u = int(hashlib.sha256(video_id.encode()).hexdigest()[:16], 16) / 2**64
    total = sum(sizes.values())
    if u < sizes["train"] / total:
        return "train"
    if u < (sizes["train"] + sizes["valid"]) / total:
        return "valid"
    return "test"


def hash_description(dataset: str) -> str:
    sizes = STANDARD_FOLD_SIZES[dataset]
    return (
        f"hash split: sha256 of the video id, in the proportions {sizes['train']}/{sizes['valid']}/{sizes['test']} "
        f"of the standard {DATASET_NAME[dataset]} folds; {NOT_STANDARD}"
    )
