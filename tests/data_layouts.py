"""Raw data in the exact layouts of the published files, small enough for tests.

* :func:`mult_layout`: MulT's ``mosei_senti_data_noalign.pkl`` / ``mosi_data_noalign.pkl``
  (yaohungt/Multimodal-Transformer): ``split -> {text, audio, vision (N, T, D), labels
  (N, 1, 1) float32, id (N, 3) (video id, start, end)}``; text float64 as published; every
  sequence zero LEFT-padded; audio holds -inf (COVAREP log energies) and a row of NaN.
* :func:`mmsa_layout`: MMSA's ``<MOSEI|MOSI>/Processed/unaligned_50.pkl`` (thuiar/MMSA README
  "Datasets" and ``data_loader.py``): ``split -> {raw_text, audio, vision, id, text,
  text_bert, audio_lengths, vision_lengths, annotations, classification_labels,
  regression_labels}``; audio and vision zero RIGHT-padded after their stated lengths (lists of
  ints); ``text`` (N, T_L, 768) BERT features whose padding rows are NOT zero (BERT outputs
  something at [PAD]), the true tokens given by ``text_bert`` (N, 3, T_L): input ids,
  attention mask, segment ids; ids ``"<video>$_$<clip>"``; audio holds -inf.

Every true row holds values that are never 0 (``row_value``), so a test can tell from the
prepared arrays which raw row went where: row ``k`` of sample ``i`` of modality ``m`` has
``100 * i + k + 1 + offset[m]`` in its first column.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")
OFFSET = {"vision": 0.25, "audio": 0.5, "text": 0.75}
WIDTHS_MOSEI_MMSA = {"text": 768, "audio": 74, "vision": 35}
WIDTHS_MOSI_MULT = {"text": 300, "audio": 5, "vision": 20}


def row_value(i: int, k: int, key: str) -> float:
    return 100 * i + k + 1 + OFFSET[key]


def _rows(i: int, n_rows: int, key: str, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.uniform(1, 2, (n_rows, dim))
    x[:, 0] = [row_value(i, k, key) for k in range(n_rows)]
    return x


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Averages of three annotators on -3..3: multiples of 1/3, as in MOSEI and MOSI."""
    return np.round(rng.uniform(-3, 3, n) * 3) / 3


def mult_layout(
    sizes: dict[str, int], steps: dict[str, int], widths: dict[str, int], seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for split in SPLITS:
        n = sizes[split]
        d: dict[str, np.ndarray] = {}
        for key in ("text", "audio", "vision"):
            T = steps[key]
            x = np.zeros((n, T, widths[key]), dtype=np.float64 if key == "text" else np.float32)
            for i in range(n):
                true = 1 + (3 * i + len(key)) % T  # 1..T true rows
                x[i, T - true :] = _rows(i, true, key, widths[key], rng)
            d[key] = x
        d["audio"][:, -1, 0] = -np.inf  # last (always true) row: -inf in the first column
        d["audio"][0, -1, 1:] = np.nan  # and a row of NaN in sample 0
        d["labels"] = _labels(n, rng).astype(np.float32).reshape(n, 1, 1)
        d["id"] = np.array([[f"vid{i // 2:03d}", f"{i % 2 * 5.5:.3f}", f"{i % 2 * 5.5 + 4:.3f}"] for i in range(n)])
        out[split] = d
    return out


def mmsa_layout(
    sizes: dict[str, int], steps: dict[str, int], widths: dict[str, int], seed: int = 0, text_bert: bool = True
) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    out = {}
    for split in SPLITS:
        n = sizes[split]
        d: dict = {}
        lengths = {}
        for key in ("audio", "vision", "text"):
            T = steps[key]
            x = np.zeros((n, T, widths[key]), dtype=np.float32)
            true = np.array([1 + (3 * i + len(key)) % T for i in range(n)])
            for i in range(n):
                x[i, : true[i]] = _rows(i, int(true[i]), key, widths[key], rng)
                if key == "text" and text_bert:
                    x[i, true[i] :] = rng.uniform(-1, 1, (T - true[i], widths[key]))  # BERT output at [PAD]
            d[key] = x
            lengths[key] = true
        d["audio"][:, 0, 0] = -np.inf  # first (always true) row: -inf in the first column
        d["audio_lengths"] = [int(v) for v in lengths["audio"]]
        d["vision_lengths"] = [int(v) for v in lengths["vision"]]
        if text_bert:
            T = steps["text"]
            ids = np.zeros((n, 3, T))
            for i, k in enumerate(lengths["text"]):
                ids[i, 0, :k] = [101] + list(rng.integers(1000, 5000, k - 2)) + [102] if k >= 2 else [101]
                ids[i, 1, :k] = 1
            d["text_bert"] = ids
        labels = _labels(n, rng)
        d["regression_labels"] = labels.astype(np.float32)
        d["classification_labels"] = np.sign(labels).astype(np.float32) + 1
        d["annotations"] = np.array(["Negative" if y < 0 else "Neutral" if y == 0 else "Positive" for y in labels])
        d["id"] = np.array([f"vid{i // 2:03d}$_${i % 2 + 1}" for i in range(n)], dtype=object)
        d["raw_text"] = np.array([f"segment {i} of {split}" for i in range(n)], dtype=object)
        out[split] = d
    return out


def dump(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path
