"""Reader for CMU-MultimodalSDK computational sequences (``.csd``) of CMU-MOSEI and CMU-MOSI.

Layout, as the SDK's ``write_CSD`` writes it (Zadeh et al. 2018, CMU-MultiComp-Lab/
CMU-MultimodalSDK, ``mmsdk/mmdatasdk/computational_sequence/file_ops.py``): HDF5 with one root
group ``/<root name>``, holding ``data/<video id>/features`` (m x n) and
``data/<video id>/intervals`` (m x 2, start and end in seconds), and ``metadata/<key>``, each
key a one-element string dataset holding JSON.

What the format requires (the SDK's reader fails without it, and so does this one, with a
:class:`DataError` naming the file and, where one is concerned, the video): one root group with
``data`` and ``metadata``; the metadata key ``root name``; per video, ``features`` and
``intervals`` of the same number of rows, ``intervals`` of two columns. What it only recommends
(the SDK logs "Missing metadata" and continues; so does this reader, with a warning): the other
keys of the SDK's metadata template (description, dimension names, version, ...). Metadata
values are not read: this reader needs none, and HDF5 can hang on a damaged string heap. Beyond the
format, this reader needs finite intervals with ``end >= start``, one feature width per file,
at least the sentiment column in the labels (column 0) and labels within [-3, 3].

Segments, numbered as the SDK's ``align`` numbers them: row ``i`` of a video's labels, in the
order the file stores them (not sorted by time), is segment ``<video id>[<i>]`` with its
interval ``[s, e]``. Rows with ``|e - s| < 1e-5`` are skipped, as ``align`` skips them (their
number is not reused); they are counted. For each modality a segment takes, in time order,
the feature rows of the same video whose interval overlaps it (``start < e and end > s``; a
zero-width row counts when ``s <= start < e``), then keeps the last ``T`` rows or left-pads
with zeros, as :mod:`mmdistill.data.prepare` does for MulT's pickles. The number of rows
before that cut is returned (``lengths``: modality letter -> (N,)), so that prepare counts the true
lengths and truncations. A video missing from a modality gives all-zero sequences (length 0,
counted per modality); the SDK's ``align`` would drop such a video instead.

Folds: see :mod:`mmdistill.data.split`. A labelled video that no fold lists is dropped,
counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from mmdistill.data import SPLITS
from mmdistill.data.dataset import DataError
from mmdistill.data.split import hash_fold
from mmdistill.modalities import FILE_KEY, MODALITIES

log = logging.getLogger(__name__)

# paths relative to the SDK base URL of each data set; the files may also sit flat in one directory
CSD_FILES = {
    "mosei": {
        "L": "language/CMU_MOSEI_TimestampedWordVectors.csd",
        "A": "acoustic/CMU_MOSEI_COVAREP.csd",
        "V": "visual/CMU_MOSEI_VisualFacet42.csd",
        "labels": "labels/CMU_MOSEI_Labels.csd",
    },
    "mosi": {
        "L": "language/CMU_MOSI_TimestampedWordVectors.csd",
        "A": "acoustic/CMU_MOSI_COVAREP.csd",
        "V": "visual/CMU_MOSI_Visual_Facet_42.csd",
        "labels": "labels/CMU_MOSI_Opinion_Labels.csd",
    },
}
# label columns the SDK's label files hold; only column 0 (sentiment) is read
LABEL_COLUMNS = {
    "mosei": ("sentiment", "happy", "sad", "anger", "surprise", "disgust", "fear"),
    "mosi": ("sentiment",),
}
SENTIMENT_COLUMN = 0
LABEL_RANGE = 3.0
LABEL_TOLERANCE = 1e-4
EPSILON = 1e-5  # the SDK's interval tolerance: label rows shorter than this are skipped
REQUIRED_METADATA = ("root name",)
# the SDK's featuresetMetadataTemplate (mmsdk/mmdatasdk/configurations/metadataconfigs.py)
RECOMMENDED_METADATA = (
    "computational sequence description",
    "dimension names",
    "computational sequence version",
    "alignment compatible",
    "dataset name",
    "dataset version",
    "creator",
    "contact",
    "featureset bib citation",
    "dataset bib citation",
)
_EXAMPLES = 20  # video ids listed in the summary and the log per count


def locate(directory: str | Path, dataset: str = "mosei") -> dict[str, Path]:
    """Paths of the four ``.csd`` files of ``dataset``, flat in ``directory`` or under their SDK sub-folders."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory holding the {dataset} .csd files")
    found, missing = {}, []
    for key, rel in CSD_FILES[dataset].items():
        for cand in (directory / Path(rel).name, directory / rel):
            if cand.is_file():
                found[key] = cand
                break
        else:
            missing.append(Path(rel).name)
    if missing:
        raise DataError(f"{directory}: missing .csd files {missing}")
    return found


def load(
    directory: str | Path,
    lengths: dict[str, int],
    folds: dict[str, list[str]] | str,
    dataset: str = "mosei",
    shown: dict[str, Path] | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read the four ``.csd`` files into the MulT pickle layout (see the module docstring).

    ``folds``: ``{"train": [video ids], ...}`` or ``"hash"`` for the hash split.
    ``shown``: the path to name in messages for each file key (the user's own file when
    ``directory`` holds links to it); default the file read.
    Returns ``(raw, info)``: ``raw`` is ``split -> {text, audio, vision, lengths
    {V, A, L: rows before the cut}, labels, id}``; ``info`` holds the counts of what was dropped, skipped or missing.
    """
    paths = locate(directory, dataset)
    shown = {k: Path(shown[k]) if shown and k in shown else p for k, p in paths.items()}
    if folds == "hash":
        fold_of = None
    elif isinstance(folds, dict):
        fold_of = {vid: s for s in SPLITS for vid in folds[s]}
    else:
        raise ValueError(f"folds must be a dict of video id lists or 'hash', got {type(folds).__name__}")
    warnings: list[str] = []
    with (
        _Csd(paths["labels"], shown["labels"], warnings) as flab,
        _Csd(paths["L"], shown["L"], warnings) as fl,
        _Csd(paths["A"], shown["A"], warnings) as fa,
        _Csd(paths["V"], shown["V"], warnings) as fv,
    ):
        _check_label_columns(flab, dataset, warnings)
        feats = {"L": fl, "A": fa, "V": fv}
        dims = {m: feats[m].width() for m in MODALITIES}
        keys = {m: FILE_KEY[m] for m in MODALITIES}
        acc = {s: {k: [] for k in (*keys.values(), *MODALITIES, "labels", "id")} for s in SPLITS}
        absent: dict[str, list[str]] = {m: [] for m in MODALITIES}
        no_fold: list[str] = []
        zero_width = 0
        labelled = flab.videos()
        for vid in labelled:
            split = hash_fold(vid, dataset) if fold_of is None else fold_of.get(vid)
            if split is None:
                no_fold.append(vid)
                continue
            lab_x, lab_t = flab.video(vid)
            _check_labels(lab_x, flab.shown, vid)
            mods = {}
            for m in MODALITIES:
                if feats[m].has(vid):
                    x, t = feats[m].video(vid, dims[m])
                    order = np.argsort(t[:, 0], kind="stable")  # time order, as the SDK's pre-alignment sorts
                    mods[m] = (x[order], t[order])
                else:
                    absent[m].append(vid)
                    mods[m] = None
            a = acc[split]
            for i, (s, e) in enumerate(lab_t):  # row order of the file: the SDK's segment numbers
                if abs(e - s) < EPSILON:
                    zero_width += 1
                    continue
                for m in MODALITIES:
                    seq, n_rows = _segment(mods[m], s, e, lengths[m], dims[m])
                    a[keys[m]].append(seq)
                    a[m].append(n_rows)
                a["labels"].append(lab_x[i, SENTIMENT_COLUMN])
                a["id"].append(f"{vid}[{i}]")
    info = {
        "dataset": dataset,
        "files": {k: str(p) for k, p in shown.items()},
        "feature_widths": dims,
        "labelled_videos": len(labelled),
        "videos_in_no_fold": len(no_fold),
        "videos_in_no_fold_examples": no_fold[:_EXAMPLES],
        "zero_width_label_rows_skipped": zero_width,
        "videos_without_features": {m: len(absent[m]) for m in MODALITIES},
        "videos_without_features_examples": {m: absent[m][:_EXAMPLES] for m in MODALITIES},
        "warnings": warnings,
    }
    if fold_of is not None:
        info["fold_videos_without_labels"] = len(set(fold_of) - set(labelled))
    if no_fold:
        log.warning(
            "%d of %d labelled videos are in no fold and were dropped (e.g. %s)",
            len(no_fold),
            len(labelled),
            ", ".join(no_fold[:5]),
        )
    if zero_width:
        log.info("%d label rows of zero duration skipped (as the SDK's align skips them)", zero_width)
    for m in MODALITIES:
        if absent[m]:
            log.warning(
                "%d kept videos have no %s features in %s (all-zero sequences)", len(absent[m]), keys[m], shown[m]
            )
    out = {}
    for split in SPLITS:
        a = acc[split]
        if not a["id"]:
            raise DataError(f"{directory}: no segment falls in split '{split}'")
        out[split] = {keys[m]: np.stack(a[keys[m]]) for m in MODALITIES}
        out[split]["lengths"] = {m: np.asarray(a[m], dtype=np.int64) for m in MODALITIES}
        out[split]["labels"] = np.asarray(a["labels"], dtype=np.float32).reshape(-1, 1, 1)
        out[split]["id"] = np.array(a["id"])
    return out, info


@contextmanager
def _h5_errors(shown: Path, vid: str | None = None) -> Iterator[None]:
    """HDF5 failures inside (a damaged or incomplete file) become a DataError naming the file (and video)."""
    try:
        yield
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        where = f"{shown}: video {vid}" if vid is not None else str(shown)
        raise DataError(
            f"{where}: cannot be read ({type(exc).__name__}: {exc}); the file is damaged or incomplete, "
            "download or copy it again"
        ) from exc


class _Csd:
    """One open ``.csd`` file: checks its structure and metadata, reads videos; messages name ``shown``."""

    def __init__(self, path: Path, shown: Path, warnings: list[str]):
        self.path, self.shown, self._warnings = path, shown, warnings
        self._file: h5py.File | None = None

    def __enter__(self) -> _Csd:
        with _h5_errors(self.shown):
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise DataError(f"{self.shown}: cannot be opened as HDF5 ({exc}); download or copy it again") from exc
            roots = list(self._file.keys())
            if len(roots) != 1:
                raise DataError(f"{self.shown}: expected one root group (the computational sequence), found {roots}")
            self.root_group = roots[0]
            root = self._file[self.root_group]
            for part in ("data", "metadata"):
                if part not in root or not isinstance(root[part], h5py.Group):
                    raise DataError(f"{self.shown}: root group '{self.root_group}' has no '{part}' group")
            self.data = root["data"]
            self.metadata_keys = self._check_metadata(root["metadata"])
            self._video_ids = sorted(self.data.keys())
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self._warnings.append(message)

    def _check_metadata(self, group: h5py.Group) -> list[str]:
        """The metadata keys, checked for presence. Their values (JSON strings on the file's heap)
        are not read: this reader needs none, and HDF5 can hang on a damaged heap."""
        keys = list(group.keys())
        missing = [k for k in REQUIRED_METADATA if k not in keys]
        if missing:
            raise DataError(
                f"{self.shown}: metadata lacks {missing}, which the SDK's format requires "
                f"(the root group is '{self.root_group}')"
            )
        recommended = [k for k in RECOMMENDED_METADATA if k not in keys]
        if recommended:
            self._warn(f"{self.shown}: metadata lacks keys the SDK recommends: {recommended}")
        return keys

    def videos(self) -> list[str]:
        return list(self._video_ids)

    def has(self, vid: str) -> bool:
        with _h5_errors(self.shown, vid):
            return vid in self.data

    def width(self) -> int:
        """Feature width of the file (from its first video); every video is checked against it when read."""
        if not self._video_ids:
            raise DataError(f"{self.shown}: holds no videos")
        vid = self._video_ids[0]
        with _h5_errors(self.shown, vid):
            shape = self.data[vid]["features"].shape
        if len(shape) != 2:
            raise DataError(f"{self.shown}: video {vid} has features of shape {shape}; expected (rows, width)")
        return int(shape[1])

    def video(self, vid: str, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features float32 (m, n) and intervals float64 (m, 2) of one video, in stored order."""
        with _h5_errors(self.shown, vid):
            g = self.data[vid]
            if not isinstance(g, h5py.Group) or "features" not in g or "intervals" not in g:
                raise DataError(f"{self.shown}: video {vid} lacks 'features' or 'intervals'")
            x, t = g["features"][()], g["intervals"][()]
        if x.dtype.kind not in "fiub" or t.dtype.kind not in "fiu":
            raise DataError(
                f"{self.shown}: video {vid} has features of dtype {x.dtype}, intervals {t.dtype}; expected numbers"
            )
        if x.ndim != 2 or t.shape != (x.shape[0], 2):
            raise DataError(
                f"{self.shown}: video {vid} has features {x.shape} and intervals {t.shape}; expected (m, n) and (m, 2)"
            )
        if width is not None and x.shape[1] != width:
            raise DataError(
                f"{self.shown}: video {vid} features have {x.shape[1]} columns; the file's first video has {width}"
            )
        t = t.astype(np.float64)
        if not np.isfinite(t).all():
            raise DataError(f"{self.shown}: video {vid} has {int((~np.isfinite(t)).sum())} non-finite interval bounds")
        if (t[:, 1] < t[:, 0]).any():
            row = int(np.argmax(t[:, 1] < t[:, 0]))
            raise DataError(f"{self.shown}: video {vid} row {row}: interval {t[row].tolist()} ends before it starts")
        return x.astype(np.float32), t


def _check_label_columns(labels: _Csd, dataset: str, warnings: list[str]) -> None:
    """The sentiment column is required; the SDK's other label columns are only recommended."""
    width = labels.width()
    if width <= SENTIMENT_COLUMN:
        raise DataError(
            f"{labels.shown}: labels have {width} columns; column {SENTIMENT_COLUMN} (sentiment) is required"
        )
    expected = LABEL_COLUMNS[dataset]
    if width != len(expected):
        message = (
            f"{labels.shown}: labels have {width} columns; the SDK's {dataset} labels have {len(expected)} "
            f"({', '.join(expected)}); column {SENTIMENT_COLUMN} is read as sentiment"
        )
        log.warning("%s", message)
        warnings.append(message)


def _check_labels(x: np.ndarray, shown: Path, vid: str) -> None:
    y = x[:, SENTIMENT_COLUMN].astype(np.float64)
    bad = np.isnan(y) | (np.abs(y) > LABEL_RANGE + LABEL_TOLERANCE)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{shown}: video {vid}: {len(rows)} sentiment labels are NaN or outside [-3, 3] "
            f"(row {int(rows[0])}: {y[rows[0]]:.4g}); sentiment lies in [-3, 3]"
        )


def _segment(
    video: tuple[np.ndarray, np.ndarray] | None,
    s: float,
    e: float,
    T: int,
    dim: int,
) -> tuple[np.ndarray, int]:
    """Feature rows of a video overlapping [s, e], last T kept, left zero-padded: ((T, dim), rows before the cut)."""
    out = np.zeros((T, dim), dtype=np.float32)
    if video is None:
        return out, 0
    x, t = video
    start, end = t[:, 0], t[:, 1]
    hit = (start < e) & ((end > s) | ((end == start) & (start >= s)))
    rows = x[hit]  # (n, dim)
    kept = rows[-T:]
    if len(kept):
        out[T - len(kept) :] = kept
    return out, len(rows)
