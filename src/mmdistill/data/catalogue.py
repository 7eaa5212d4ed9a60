"""What is known about the published copies of CMU-MOSEI and CMU-MOSI: split sizes, checksums,
label rules.

Split sizes (segments in train / valid / test) of the standard folds, as the published files
hold them:

* MOSEI through MulT's ``mosei_senti_data_noalign.pkl`` (Tsai et al. 2019,
  yaohungt/Multimodal-Transformer) and MMSA's ``MOSEI/Processed/unaligned_50.pkl`` (thuiar/MMSA,
  ``config_regression.json``: ``train_samples`` 16326): 16,326 / 1,871 / 4,659.
* MOSI through MulT's ``mosi_data_noalign.pkl`` and MMSA's ``MOSI/Processed/unaligned_50.pkl``
  (MMSA ``train_samples`` 1284; the same 1284 / 229 / 686 shapes are reported for the CMU MOSI
  files by users of both): 1,284 / 229 / 686.

A size that differs is a warning, not an error (a user may hold a subset). The ``sdk_csd``
entries are ``None``: no segment counts are published for the ``.csd`` files. The SDK's
standard folds list videos (MOSEI 2,249 / 300 / 678, MOSI 52 / 10 / 31; shipped in
``mmdistill/data/folds/``), and the summary's ``raw.folds`` reports the labelled videos no
fold lists (:data:`EXPECTED_SIZES` is the one table to edit).

Checksums: MMSA's README publishes the SHA-256 of its feature pickles (listed in
:data:`PUBLISHED_SHA256`); MulT and the SDK publish none for their processed files.
"""

from __future__ import annotations

import numpy as np

DATASETS = ("mosei", "mosi")
SPLIT_SIZES_MOSEI = {"train": 16326, "valid": 1871, "test": 4659}
SPLIT_SIZES_MOSI = {"train": 1284, "valid": 229, "test": 686}

# (dataset, source) -> expected segments per split; None: nothing published to compare with
EXPECTED_SIZES: dict[tuple[str, str], dict[str, int] | None] = {
    ("mosei", "mult_pkl"): SPLIT_SIZES_MOSEI,
    ("mosei", "mmsa_pkl"): SPLIT_SIZES_MOSEI,
    ("mosi", "mult_pkl"): SPLIT_SIZES_MOSI,
    ("mosi", "mmsa_pkl"): SPLIT_SIZES_MOSI,
    ("mosei", "sdk_csd"): None,  # nothing published for the .csd files (see above)
    ("mosi", "sdk_csd"): None,  # nothing published for the .csd files (see above)
}

# SHA-256 published in MMSA's README (thuiar/MMSA, section "Datasets"), by file
PUBLISHED_SHA256 = {
    "78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524": "MMSA MOSI/Processed/unaligned_50.pkl",
    "d3994fd25681f9c7ad6e9c6596a6fe9b4beb85ff7d478ba978b124139002e5f9": "MMSA MOSI/Processed/aligned_50.pkl",
    "ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f": "MMSA MOSEI/Processed/unaligned_50.pkl",
    "45eccfb748a87c80ecab9bfac29582e7b1466bf6605ff29d3b338a75120bf791": "MMSA MOSEI/Processed/aligned_50.pkl",
    "c9e20c13ec0454d98bb9c1e520e490c75146bfa2dfeeea78d84de047dbdd442f": "MMSA SIMS/Processed/unaligned_39.pkl",
}

LABEL_RULES = {
    "round": "label7 = numpy.round(clip(y, -3, 3)) + 3; numpy rounds halves to even "
    "(-2.5 -> -2, 0.5 -> 0, 1.5 -> 2): the acc7 of MulT and MMSA",
    "sdk": "label7 = cmumosei_round(clip(y, -3, 3)) + 3, CMU-MultimodalSDK's rule: y < -2 -> -3, "
    "-2 <= y < -1 -> -2, -1 <= y < 0 -> -1, y = 0 -> 0, 0 < y <= 1 -> 1, 1 < y <= 2 -> 2, y > 2 -> 3",
}
LABEL_RULE_SHORT = {"round": "numpy.round(clip(y, -3, 3))", "sdk": "SDK cmumosei_round(clip(y, -3, 3))"}


# name of the raw pickle under data/raw/<source>/ (MulT's own names; MMSA's all read unaligned_50.pkl)
RAW_PICKLE_NAMES = {
    ("mult_pkl", "mosei"): "mosei_senti_data_noalign.pkl",
    ("mult_pkl", "mosi"): "mosi_data_noalign.pkl",
    ("mmsa_pkl", "mosei"): "mmsa_mosei_unaligned_50.pkl",
    ("mmsa_pkl", "mosi"): "mmsa_mosi_unaligned_50.pkl",
}


def raw_file_name(source: str, dataset: str) -> str:
    if (source, dataset) not in RAW_PICKLE_NAMES:
        raise ValueError(f"no raw pickle name for source {source!r} and dataset {dataset!r}")
    return RAW_PICKLE_NAMES[(source, dataset)]


def classes(y: np.ndarray, rule: str) -> np.ndarray:
    """Sentiment in [-3, 3] -> class -3..3 by ``rule`` (see :data:`LABEL_RULES`), int64.

    ``sdk`` follows the SDK's ``cmumosei_round`` (CMU-MultimodalSDK, CMU-MOSEI README,
    "Binarization"): a value on an integer boundary goes towards zero (1 -> 1, -1 -> -1),
    any other value away from zero, to the next integer (0.2 -> 1, -0.2 -> -1).
    """
    y = np.asarray(y, dtype=np.float64)
    if rule == "round":
        return np.round(y).astype(np.int64)
    if rule == "sdk":
        conditions = [y < -2, y < -1, y < 0, y == 0, y <= 1, y <= 2]
        return np.select(conditions, [-3, -2, -1, 0, 1, 2], default=3).astype(np.int64)
    raise ValueError(f"unknown label rule {rule!r}; expected one of {sorted(LABEL_RULES)}")


def expected_sizes(dataset: str, source: str) -> dict[str, int] | None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return EXPECTED_SIZES.get((dataset, source))


def compare_sizes(read: dict[str, int], expected: dict[str, int] | None, what: str) -> tuple[str, list[str]]:
    """(verdict for the summary, warning lines): 'match', 'mismatch' or 'nothing to compare with'."""
    if expected is None:
        return "nothing to compare with", []
    warnings = [
        f"{what}: split '{s}' has {read.get(s)} segments; the published {what} has {n}"
        for s, n in expected.items()
        if read.get(s) != n
    ]
    return ("match" if not warnings else "mismatch"), warnings
