"""From a raw data set (MulT pickle layout) to the prepared arrays and HDF5 of :mod:`mmdistill.data`.

Rules, applied per split and modality (all recorded in the summary):

* Length: a sequence keeps its last ``T`` steps, or is left-padded with zero rows up to ``T``.
  Its true length is the number of rows from the first row that is not all zero to the end
  (leading all-zero rows are padding, as in MulT's pickles), clipped to ``T``. NaN counts as
  non-zero, so a row of NaN is data, not padding.
* Cleaning: NaN, +inf and -inf are replaced with 0 (MulT's reference replaces audio -inf with
  0 too); the counts of each, and of rows that were entirely NaN, are reported.
* Labels: a label that is NaN or outside [-3, 3] (beyond a 1e-4 tolerance for float error) is
  an error naming the split and the count, since MOSEI sentiment lies in [-3, 3]. Otherwise
  ``label = clip(label, -3, 3)`` and ``label7 = numpy.round(label) + 3``: numpy rounds halves
  to even, so -2.5 -> -2 (class 1), 0.5 -> 0 (class 3), 1.5 -> 2 (class 5), 2.5 -> 2 (class 5),
  the same rule MulT's ``eval_metrics.py`` uses for acc7.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from mmdistill.data import FORMAT_VERSION, N_CLASSES, SPLITS
from mmdistill.data.dataset import DataError
from mmdistill.io import atomic_path
from mmdistill.modalities import FEATURE_DIM, FILE_KEY, MODALITIES

LABEL_KEY = "labels"
ID_KEY = "id"
LABEL_TOLERANCE = 1e-4
ROUNDING = "label7 = numpy.round(clip(label, -3, 3)) + 3; numpy rounds halves to even (-2.5 -> -2, 0.5 -> 0, 1.5 -> 2)"
LABEL_RULE = "labels that are NaN or outside [-3, 3] (tolerance 1e-4) are an error"
_ROW_CHUNK = 1024  # samples per chunk when scanning for padding rows


def prepare(
    raw: dict[str, dict[str, np.ndarray]], lengths: dict[str, int], source: str
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Cut/pad, clean and discretize ``raw``; return ``(arrays per split, summary)``.

    ``raw`` is ``split -> {text, audio, vision (N, T_raw, D), labels (N, ...), id (N,)}``.
    The returned arrays per split are ``vision/audio/text`` float32 ``(N, T_m, D)``,
    ``length`` int32 ``(N, 3)`` (columns V, A, L), ``label`` float32 ``(N,)``, ``label7``
    int64 ``(N,)`` and ``segment_id`` (list of str). ``raw`` is not modified.
    """
    for m in MODALITIES:
        if not isinstance(lengths.get(m), int) or lengths[m] < 1:
            raise ValueError(f"lengths[{m!r}] must be a positive integer, got {lengths.get(m)!r}")
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(f"raw data lacks splits {missing}")
    arrays, per_split = {}, {}
    for split in SPLITS:
        arrays[split], per_split[split] = prepare_split(raw[split], lengths, split)
    summary = {
        "source": source,
        "format_version": FORMAT_VERSION,
        "lengths": {m: lengths[m] for m in MODALITIES},
        "rounding": ROUNDING,
        "label_rule": LABEL_RULE,
        "cleaning": "NaN, +inf and -inf replaced with 0; counts per split and modality below",
        "n": {s: per_split[s]["n"] for s in SPLITS},
        "splits": per_split,
    }
    return arrays, summary


def prepare_split(d: dict[str, np.ndarray], lengths: dict[str, int], split: str) -> tuple[dict[str, np.ndarray], dict]:
    """One split: see :func:`prepare`."""
    need = [FILE_KEY[m] for m in MODALITIES] + [LABEL_KEY, ID_KEY]
    lacking = [k for k in need if k not in d]
    if lacking:
        raise DataError(f"split '{split}' lacks keys {lacking}")
    n = int(np.asarray(d[LABEL_KEY]).shape[0]) if np.ndim(d[LABEL_KEY]) else 0
    if n == 0:
        raise DataError(f"split '{split}' is empty")
    out: dict[str, np.ndarray] = {}
    stats: dict = {"n": n, "nonfinite": {}, "zero_length": {}, "truncated": {}, "mean_length": {}}
    length = np.zeros((n, len(MODALITIES)), dtype=np.int32)
    for j, m in enumerate(MODALITIES):
        key = FILE_KEY[m]
        x = np.asarray(d[key])
        if x.ndim != 3 or x.shape[0] != n or x.shape[2] != FEATURE_DIM[m]:
            raise DataError(f"split '{split}': '{key}' has shape {x.shape}; expected ({n}, T, {FEATURE_DIM[m]})")
        raw_len = true_lengths(x)  # (N,)
        x = fit_length(x, lengths[m])  # (N, T_m, D) float32, a copy
        stats["nonfinite"][m] = clean_(x)
        length[:, j] = np.minimum(raw_len, lengths[m])
        stats["zero_length"][m] = int((raw_len == 0).sum())
        stats["truncated"][m] = int((raw_len > lengths[m]).sum())
        stats["mean_length"][m] = round(float(length[:, j].mean()), 3)
        out[key] = x
    out["length"] = length
    out["label"], out["label7"] = discretize(d[LABEL_KEY], split)
    stats["class_histogram"] = np.bincount(out["label7"], minlength=N_CLASSES).tolist()
    ids = np.asarray(d[ID_KEY])
    if ids.shape != (n,):
        raise DataError(f"split '{split}': 'id' has shape {ids.shape}; expected ({n},)")
    out["segment_id"] = [s.decode() if isinstance(s, bytes) else str(s) for s in ids]
    return out, stats


def true_lengths(x: np.ndarray) -> np.ndarray:
    """Rows from the first not-all-zero row to the end, per sample: (N, T, D) -> (N,) int64."""
    n, T, _ = x.shape
    first = np.empty(n, dtype=np.int64)
    for lo in range(0, n, _ROW_CHUNK):
        data = (x[lo : lo + _ROW_CHUNK] != 0).any(axis=-1)  # (n_chunk, T); NaN != 0
        first[lo : lo + _ROW_CHUNK] = np.where(data.any(axis=1), data.argmax(axis=1), T)
    return T - first


def fit_length(x: np.ndarray, T: int) -> np.ndarray:
    """Keep the last ``T`` steps or left-pad with zeros: (N, T_raw, D) -> (N, T, D) float32."""
    n, t_raw, dim = x.shape
    out = np.zeros((n, T, dim), dtype=np.float32)
    keep = min(T, t_raw)
    if keep:
        out[:, T - keep :] = x[:, t_raw - keep :]
    return out


def clean_(x: np.ndarray) -> dict[str, int]:
    """Replace NaN and +-inf with 0 in place; return their counts and all-NaN rows."""
    nan = np.isnan(x)
    counts = {
        "nan": int(nan.sum()),
        "posinf": int(np.isposinf(x).sum()),
        "neginf": int(np.isneginf(x).sum()),
        "all_nan_rows": int(nan.all(axis=-1).sum()),
    }
    np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return counts


def discretize(labels: np.ndarray, split: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """Continuous labels (N, ...) -> (clipped float32 (N,), class index int64 (N,) in 0..6)."""
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    if y.shape[1] != 1:
        raise DataError(f"split '{split}': labels have shape {np.shape(labels)}; expected one per sample")
    y = y[:, 0]
    n_nan = int(np.isnan(y).sum())
    if n_nan:
        raise DataError(f"split '{split}': {n_nan} labels are NaN")
    outside = np.abs(y) > 3 + LABEL_TOLERANCE
    if outside.any():
        bad = y[outside]
        raise DataError(
            f"split '{split}': {int(outside.sum())} labels lie outside [-3, 3] "
            f"(min {bad.min():.4g}, max {bad.max():.4g}); MOSEI sentiment is within [-3, 3]"
        )
    y = np.clip(y, -3.0, 3.0)
    label7 = (np.round(y) + 3).astype(np.int64)
    return y.astype(np.float32), label7


def write_h5(arrays: dict[str, dict[str, np.ndarray]], summary: dict, out_h5: str | Path) -> Path:
    """Write the prepared arrays in the layout of :mod:`mmdistill.data`, atomically."""
    out_h5 = Path(out_h5)
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["source"] = summary["source"]
            f.attrs["lengths"] = json.dumps(summary["lengths"])
            f.attrs["rounding"] = ROUNDING
            f.attrs["format_version"] = FORMAT_VERSION
            for split in SPLITS:
                a = arrays[split]
                g = f.create_group(split)
                for m in MODALITIES:
                    g.create_dataset(FILE_KEY[m], data=a[FILE_KEY[m]].astype(np.float32, copy=False))
                g.create_dataset("length", data=a["length"].astype(np.int32))
                g.create_dataset("label", data=a["label"].astype(np.float32))
                g.create_dataset("label7", data=a["label7"].astype(np.int64))
                g.create_dataset("segment_id", data=np.array([s.encode() for s in a["segment_id"]]))
    return out_h5
