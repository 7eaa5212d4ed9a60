"""From a raw data set to the prepared arrays and HDF5 of :mod:`mmdistill.data`.

The raw data set is ``split -> {text, audio, vision (N, T_raw, D_m), labels (N, ...), id (N,)}``
(MulT's pickle layout; the other readers produce it too), plus, for right-padded sources, the
true length of every sequence under ``lengths`` (``{modality letter: (N,) int}``).

Rules, applied per split and modality (all recorded in the summary):

* Widths: each modality keeps the feature width of the data (any ``D_m``), which must be the
  same in every split; the HDF5 records it (``feature_dims``) and every model is built from it.
* Length: a sequence keeps its last ``T`` true steps, left-padded with zero rows up to ``T``.

  - ``padding='left'`` (MulT's pickles, the synthetic data, the ``.csd`` reader): the true length
    is the number of rows from the first row that is not all zero to the end (leading
    all-zero rows are padding). NaN counts as non-zero, so a row of NaN is data. A reader
    that cuts sequences itself (the ``.csd`` reader) states the rows before its cut under
    ``lengths``, which are used instead, so that truncations are counted where the cut happens.
  - ``padding='right'`` (MMSA's pickles): the true steps are the first ``length[i]`` rows, as
    the source states them; rows after them are padding and dropped, even if not zero (they
    are counted). A stated length beyond the stored rows is clipped to them (counted). The
    true steps are moved to the end, so every prepared file is left-padded.
* Cleaning: NaN, +inf and -inf in the kept window are replaced with 0 (MulT's reference
  replaces audio -inf with 0 too); the counts of each, and of rows that were entirely NaN,
  are reported.
* Labels: a label that is NaN or outside [-3, 3] (beyond a 1e-4 tolerance for float error) is
  an error naming the split and the count, since MOSEI and MOSI sentiment lies in [-3, 3].
  Otherwise ``label = clip(label, -3, 3)`` and ``label7`` = its class by the label rule
  (:data:`mmdistill.data.catalogue.LABEL_RULES`) + 3. The default ``round`` is
  ``numpy.round``, which rounds halves to even: -2.5 -> -2 (class 1), 0.5 -> 0 (class 3),
  1.5 -> 2 (class 5), 2.5 -> 2 (class 5), the rule of MulT's ``eval_metrics.py`` for acc7.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from mmdistill.data import FORMAT_VERSION, N_CLASSES, SPLITS
from mmdistill.data.catalogue import LABEL_RULES, classes
from mmdistill.data.dataset import DataError
from mmdistill.io import atomic_path
from mmdistill.modalities import FILE_KEY, MODALITIES

LABEL_KEY = "labels"
ID_KEY = "id"
LENGTHS_KEY = "lengths"
LABEL_TOLERANCE = 1e-4
ROUNDING = LABEL_RULES["round"]
LABEL_CHECKS = "labels that are NaN or outside [-3, 3] (tolerance 1e-4) are an error"
PADDING = {
    "left": "left-padded source: the true length counts the rows from the first row that is not all zero "
    "to the end; the last T true rows are kept, left zero-padded",
    "right": "right-padded source with stated lengths: the first `length` rows of each sequence are its "
    "true steps (rows after them dropped, counted as nonzero_after_length when not all zero; a length "
    "beyond the stored rows clipped, counted as length_beyond_stored); the last T true rows are kept "
    "and moved to the end, left zero-padded like every prepared file",
}
_ROW_CHUNK = 1024  # samples per chunk when scanning for padding rows


def prepare(
    raw: dict[str, dict[str, np.ndarray]],
    lengths: dict[str, int],
    source: str,
    *,
    label_rule: str = "round",
    padding: str = "left",
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Cut/pad, clean and discretize ``raw``; return ``(arrays per split, summary)``.

    ``raw`` is ``split -> {text, audio, vision (N, T_raw, D), labels (N, ...), id (N,)}``, with
    ``lengths`` ``{modality letter: (N,) int}`` when ``padding='right'``.
    The returned arrays per split are ``vision/audio/text`` float32 ``(N, T_m, D_m)``,
    ``length`` int32 ``(N, 3)`` (columns V, A, L), ``label`` float32 ``(N,)``, ``label7``
    int64 ``(N,)`` and ``segment_id`` (list of str). ``raw`` is not modified.
    """
    for m in MODALITIES:
        if not isinstance(lengths.get(m), int) or lengths[m] < 1:
            raise ValueError(f"lengths[{m!r}] must be a positive integer, got {lengths.get(m)!r}")
    if label_rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {label_rule!r}; expected one of {sorted(LABEL_RULES)}")
    if padding not in PADDING:
        raise ValueError(f"padding must be one of {sorted(PADDING)}, got {padding!r}")
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(f"raw data lacks splits {missing}")
    arrays, per_split = {}, {}
    for split in SPLITS:
        arrays[split], per_split[split] = prepare_split(raw[split], lengths, split, label_rule, padding)
    dims = {m: int(arrays[SPLITS[0]][FILE_KEY[m]].shape[2]) for m in MODALITIES}
    for split in SPLITS[1:]:
        for m in MODALITIES:
            d = int(arrays[split][FILE_KEY[m]].shape[2])
            if d != dims[m]:
                raise DataError(
                    f"split '{split}': '{FILE_KEY[m]}' has {d} features per step, split '{SPLITS[0]}' has {dims[m]}"
                )
    summary = {
        "source": source,
        "format_version": FORMAT_VERSION,
        "lengths": {m: lengths[m] for m in MODALITIES},
        "feature_dims": dims,
        "padding": PADDING[padding],
        "label_rule": label_rule,
        "rounding": LABEL_RULES[label_rule],
        "label_checks": LABEL_CHECKS,
        "cleaning": "NaN, +inf and -inf replaced with 0; counts per split and modality below",
        "n": {s: per_split[s]["n"] for s in SPLITS},
        "splits": per_split,
    }
    return arrays, summary


def prepare_split(
    d: dict[str, np.ndarray],
    lengths: dict[str, int],
    split: str,
    label_rule: str = "round",
    padding: str = "left",
) -> tuple[dict[str, np.ndarray], dict]:
    """One split: see :func:`prepare`."""
    need = [FILE_KEY[m] for m in MODALITIES] + [LABEL_KEY, ID_KEY]
    lacking = [k for k in need if k not in d]
    if lacking:
        raise DataError(f"split '{split}' lacks keys {lacking}")
    n = int(np.asarray(d[LABEL_KEY]).shape[0]) if np.ndim(d[LABEL_KEY]) else 0
    if n == 0:
        raise DataError(f"split '{split}' is empty")
    out: dict[str, np.ndarray] = {}
    stats: dict = {"n": n, "stored_steps": {}, "nonfinite": {}, "zero_length": {}, "truncated": {}, "mean_length": {}}
    if padding == "right":
        stats["nonzero_after_length"] = {}
        stats["length_beyond_stored"] = {}
    length = np.zeros((n, len(MODALITIES)), dtype=np.int32)
    for j, m in enumerate(MODALITIES):
        key = FILE_KEY[m]
        x = np.asarray(d[key])
        if x.ndim != 3 or x.shape[0] != n or x.shape[2] < 1:
            raise DataError(f"split '{split}': '{key}' has shape {x.shape}; expected ({n}, T, D)")
        stats["stored_steps"][m] = int(x.shape[1])
        if padding == "left":
            stated = m in d.get(LENGTHS_KEY, {})  # rows before a reader's own cut (mmdistill.data.sdk_csd)
            raw_len = _given_lengths(d, m, n, split) if stated else true_lengths(x)  # (N,)
            x = fit_length(x, lengths[m])  # (N, T_m, D) float32, a copy
        else:
            given = _given_lengths(d, m, n, split)
            stats["length_beyond_stored"][m] = int((given > x.shape[1]).sum())
            raw_len = np.minimum(given, x.shape[1])
            stats["nonzero_after_length"][m] = nonzero_after(x, raw_len)
            x = fit_right_padded(x, raw_len, lengths[m])
        stats["nonfinite"][m] = clean_(x)
        length[:, j] = np.minimum(raw_len, lengths[m])
        stats["zero_length"][m] = int((raw_len == 0).sum())
        stats["truncated"][m] = int((raw_len > lengths[m]).sum())
        stats["mean_length"][m] = round(float(length[:, j].mean()), 3)
        out[key] = x
    out["length"] = length
    out["label"], out["label7"] = discretize(d[LABEL_KEY], split, label_rule)
    stats["class_histogram"] = np.bincount(out["label7"], minlength=N_CLASSES).tolist()
    ids = np.asarray(d[ID_KEY])
    if ids.shape != (n,):
        raise DataError(f"split '{split}': 'id' has shape {ids.shape}; expected ({n},)")
    out["segment_id"] = [s.decode() if isinstance(s, bytes) else str(s) for s in ids]
    return out, stats


def _given_lengths(d: dict, m: str, n: int, split: str) -> np.ndarray:
    given = d.get(LENGTHS_KEY, {}).get(m)
    if given is None:
        raise DataError(f"split '{split}': a right-padded source needs the true length of every '{FILE_KEY[m]}' row")
    given = np.asarray(given)
    if given.shape != (n,) or given.dtype.kind not in "iuf" or not np.isfinite(given).all():
        raise DataError(f"split '{split}': lengths of '{FILE_KEY[m]}' must be {n} numbers, found {given.shape}")
    if (given < 0).any() or (given != np.round(given)).any():
        raise DataError(f"split '{split}': lengths of '{FILE_KEY[m]}' must be whole numbers >= 0")
    return given.astype(np.int64)


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


def fit_right_padded(x: np.ndarray, length: np.ndarray, T: int) -> np.ndarray:
    """Right-padded (N, T_raw, D) with true lengths (N,) -> the last ``T`` true rows of each
    sequence at the end, left zero-padded: (N, T, D) float32. ``length`` must be <= T_raw."""
    n, t_raw, dim = x.shape
    out = np.zeros((n, T, dim), dtype=np.float32)
    if t_raw == 0:
        return out
    steps = np.arange(T)
    for lo in range(0, n, _ROW_CHUNK):
        src = length[lo : lo + _ROW_CHUNK, None] - T + steps  # (n_chunk, T) source row of each output row
        valid = src >= 0
        rows = np.take_along_axis(x[lo : lo + _ROW_CHUNK], np.clip(src, 0, t_raw - 1)[..., None], axis=1)
        out[lo : lo + _ROW_CHUNK] = np.where(valid[..., None], rows, 0)
    return out


def nonzero_after(x: np.ndarray, length: np.ndarray) -> int:
    """Samples of a right-padded (N, T_raw, D) with a row after ``length`` that is not all zero."""
    n, t_raw, _ = x.shape
    count = 0
    for lo in range(0, n, _ROW_CHUNK):
        pad = np.arange(t_raw)[None, :] >= length[lo : lo + _ROW_CHUNK, None]  # (n_chunk, T_raw)
        data = (x[lo : lo + _ROW_CHUNK] != 0).any(axis=-1)  # NaN != 0
        count += int((data & pad).any(axis=1).sum())
    return count


def trailing_lengths(x: np.ndarray) -> np.ndarray:
    """Rows up to the last not-all-zero row, per sample (right padding): (N, T, D) -> (N,) int64."""
    n, T, _ = x.shape
    last = np.empty(n, dtype=np.int64)
    for lo in range(0, n, _ROW_CHUNK):
        data = (x[lo : lo + _ROW_CHUNK] != 0).any(axis=-1)[:, ::-1]  # (n_chunk, T), reversed
        last[lo : lo + _ROW_CHUNK] = np.where(data.any(axis=1), T - data.argmax(axis=1), 0)
    return last


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


def discretize(labels: np.ndarray, split: str = "?", rule: str = "round") -> tuple[np.ndarray, np.ndarray]:
    """Continuous labels (N, ...) -> (clipped float32 (N,), class index int64 (N,) in 0..6) by ``rule``."""
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
            f"(min {bad.min():.4g}, max {bad.max():.4g}); MOSEI and MOSI sentiment is within [-3, 3]"
        )
    y = np.clip(y, -3.0, 3.0)
    label7 = classes(y, rule) + 3
    return y.astype(np.float32), label7


def write_h5(arrays: dict[str, dict[str, np.ndarray]], summary: dict, out_h5: str | Path) -> Path:
    """Write the prepared arrays in the layout of :mod:`mmdistill.data`, atomically."""
    out_h5 = Path(out_h5)
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["source"] = summary["source"]
            f.attrs["lengths"] = json.dumps(summary["lengths"])
            f.attrs["rounding"] = summary["rounding"]
            f.attrs["label_rule"] = summary["label_rule"]
            f.attrs["feature_dims"] = json.dumps(summary["feature_dims"])
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
