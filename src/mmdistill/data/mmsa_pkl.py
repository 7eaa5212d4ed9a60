"""Reader for MMSA's processed feature pickles (``MOSEI/Processed/unaligned_50.pkl``,
``MOSI/Processed/unaligned_50.pkl``; Yu et al., thuiar/MMSA, README "Datasets" and
``src/MMSA/data_loader.py``).

Layout: a dict ``split -> key -> value`` for ``train``, ``valid``, ``test``, each split holding

* ``text`` (N, T_L, 768): BERT features per token (MOSI, MOSEI); ``text_bert`` (N, 3, T_L):
  BERT input ids, attention mask and segment ids. This pipeline trains on features: a split
  with ``text_bert`` but no ``text`` is an error that says how to get features;
* ``audio`` (N, T_A, D_A) and ``vision`` (N, T_V, D_V) (MOSEI: 74 and 35 wide, MOSI: 5 and 20),
  RIGHT-padded with zeros, with the true lengths in ``audio_lengths`` and ``vision_lengths``
  (lists or arrays of N ints); audio holds -inf as in the SDK's COVAREP features (MMSA's
  loader sets it to 0);
* ``regression_labels`` (N,) sentiment in [-3, 3] (MOSI, MOSEI);
* ``id`` (N,) strings ``"<video_id>$_$<clip_id>"`` and ``raw_text`` (N,) transcripts; also
  ``annotations`` and the deprecated ``classification_labels``, which are not read.

The text's true length is the sum of ``text_bert``'s attention mask ([CLS] and [SEP] count)
when ``text_bert`` is there, else the rows up to the last row that is not all zero. The result
is the raw layout of :mod:`mmdistill.data.prepare` with ``lengths`` per modality, to be
prepared with ``padding='right'``.

Unpickling uses the restricted unpickler of :mod:`mmdistill.data.mult_pkl` (numpy arrays and
plain containers only); use only pickles from a source you trust.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmdistill.data import SPLITS
from mmdistill.data.dataset import DataError
from mmdistill.data.mult_pkl import describe, unpickle
from mmdistill.data.prepare import trailing_lengths

FEATURE_KEYS = {"V": "vision", "A": "audio", "L": "text"}
LENGTH_KEYS = {"V": "vision_lengths", "A": "audio_lengths"}
LABEL_KEY = "regression_labels"
TEXT_IDS_KEY = "text_bert"
TEXT_LENGTH_FROM_MASK = "text: sum of text_bert's attention mask (row 1; [CLS] and [SEP] included)"
TEXT_LENGTH_FROM_ROWS = "text: rows up to the last row that is not all zero (no text_bert in the file)"
NEEDS_FEATURES = (
    "has BERT token ids ('text_bert') but no text features ('text'); this pipeline trains on "
    "per-step features, not token ids. Use MMSA's published feature files (MOSI/MOSEI "
    "Processed/unaligned_50.pkl carry 768-wide BERT features under 'text'), or extract features "
    "(e.g. with MMSA-FET, github.com/thuiar/MMSA-FET, or by running BERT over 'raw_text') and "
    "store them under 'text' as an (N, T, D) array"
)


def load(path: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Read and check an MMSA pickle; return ``(raw, notes)``.

    ``raw`` is ``split -> {text, audio, vision (float32), labels (N,), id (N,) str,
    lengths: {V, A, L: (N,) int64}}``; ``notes`` says how the text lengths were found, per split.
    """
    path = Path(path)
    obj = unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of splits, found {type(obj).__name__}")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise DataError(f"{path}: missing splits {missing} (has: {sorted(map(str, obj))})")
    raw, notes = {}, {}
    for split in SPLITS:
        raw[split], notes[split] = _split(obj[split], f"{path}: split '{split}'")
    return raw, notes


def _split(d: object, where: str) -> tuple[dict, str]:
    if not isinstance(d, dict):
        raise DataError(f"{where} is a {type(d).__name__}, expected a dict")
    if FEATURE_KEYS["L"] not in d and TEXT_IDS_KEY in d:
        raise DataError(f"{where} {NEEDS_FEATURES}")
    need = list(FEATURE_KEYS.values()) + list(LENGTH_KEYS.values()) + [LABEL_KEY]
    lacking = [k for k in need if k not in d]
    if lacking:
        hint = ""
        if any(k in lacking for k in LENGTH_KEYS.values()):
            hint = " (the unaligned MMSA files, unaligned_50.pkl, state the audio and vision lengths)"
        raise DataError(f"{where} lacks keys {lacking}{hint} (has: {sorted(map(str, d))})")
    out: dict = {"lengths": {}}
    n = None
    for key in FEATURE_KEYS.values():
        arr = d[key]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim != 3 or arr.shape[2] < 1:
            raise DataError(f"{where}: '{key}' must be a numeric (N, T, D) array, found {describe(arr)}")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise DataError(f"{where}: '{key}' has {arr.shape[0]} samples, '{FEATURE_KEYS['V']}' has {n}")
        out[key] = arr.astype(np.float32, copy=False)
    for m, key in LENGTH_KEYS.items():
        out["lengths"][m] = _lengths(d[key], n, f"{where}: '{key}'")
    text_ids = d.get(TEXT_IDS_KEY)
    if text_ids is not None:
        text_ids = np.asarray(text_ids)
        t_text = out["text"].shape[1]
        if text_ids.shape != (n, 3, t_text):
            raise DataError(
                f"{where}: '{TEXT_IDS_KEY}' has shape {text_ids.shape}; expected ({n}, 3, {t_text}) "
                "(input ids, attention mask, segment ids)"
            )
        mask = text_ids[:, 1, :]
        if not np.isin(mask, (0, 1)).all():
            raise DataError(f"{where}: row 1 of '{TEXT_IDS_KEY}' (the attention mask) must hold only 0 and 1")
        out["lengths"]["L"] = mask.sum(axis=1).astype(np.int64)
        note = TEXT_LENGTH_FROM_MASK
    else:
        out["lengths"]["L"] = trailing_lengths(out["text"])
        note = TEXT_LENGTH_FROM_ROWS
    labels = d[LABEL_KEY]
    labels = np.asarray(labels) if isinstance(labels, (list, tuple)) else labels
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "fiu" or labels.size != n:
        raise DataError(f"{where}: '{LABEL_KEY}' must be {n} numbers, found {describe(labels)}")
    out["labels"] = labels.astype(np.float32).reshape(n)
    ids = d.get("id")
    if ids is None:
        raise DataError(f"{where} lacks 'id' (segment ids '<video_id>$_$<clip_id>')")
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise DataError(f"{where}: 'id' has shape {ids.shape}; expected ({n},)")
    out["id"] = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in ids])
    return out, note


def _lengths(value: object, n: int, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (n,) or arr.dtype.kind not in "iuf":
        raise DataError(f"{where} must be {n} lengths, found {describe(arr)}")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any():
        raise DataError(f"{where} must hold whole numbers >= 0")
    return arr.astype(np.int64)
