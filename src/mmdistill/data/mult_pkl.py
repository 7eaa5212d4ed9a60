"""Reader for MulT's unaligned CMU-MOSEI pickle (``mosei_senti_data_noalign.pkl``).

Layout (Tsai et al. 2019, yaohungt/Multimodal-Transformer, ``src/dataset.py``): a dict
``split -> {text (N,T,D_L), audio (N,T,D_A), vision (N,T,D_V), labels (N,1,1), id}`` for the
splits ``train``, ``valid``, ``test``; sequences are zero left-padded; ``id`` rows are
``(video_id, start, end)`` in the MOSEI pickles. Widths come from the file (MOSEI: 300 / 74 / 35;
MOSI's ``mosi_data_noalign.pkl``: 300 / 5 / 20); the prepare step checks they agree across splits.

Security: unpickling can run arbitrary code. Only use pickles from a source you trust. This
reader lowers the risk with a restricted unpickler that rebuilds only numpy arrays, numpy
scalars and plain containers (dict, list, str, bytes, numbers) and refuses every other global
with a :class:`DataError`; it is a safeguard, not a guarantee.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
from pathlib import Path

import numpy as np

from mmdistill.data import SPLITS
from mmdistill.data.dataset import DataError
from mmdistill.modalities import FILE_KEY, MODALITIES

log = logging.getLogger(__name__)

LABEL_KEY = "labels"
ID_KEY = "id"

# (module, name) pairs a numpy array pickle may reference, for numpy 1.x and 2.x names
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
    ("collections", "OrderedDict"),
}
_NEW_NUMPY = importlib.util.find_spec("numpy._core") is not None


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': only numpy arrays and plain containers are allowed"
            )
        if _NEW_NUMPY and module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # no deprecation shim
        return super().find_class(module, name)


def load(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read and check a MulT pickle; return ``split -> key -> array``.

    Features come back as float32 ``(N, T, D)``, labels as float32 ``(N, 1, 1)`` and ``id`` as
    a 1-D array of str (``id`` rows of several fields are joined with ``_``). Raises
    :class:`DataError` naming the file and the problem for a truncated or malformed pickle,
    a missing split or key, or a wrong shape.
    """
    path = Path(path)
    return check(unpickle(path), str(path))


def unpickle(path: Path) -> object:
    """Unpickle ``path`` with :class:`ArrayUnpickler`; a truncated or malformed file is a
    :class:`DataError` naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            obj = ArrayUnpickler(f, encoding="latin1").load()  # latin1: Python 2 era pickles
    except EOFError as exc:
        raise DataError(f"{path}: truncated pickle (ends early: {exc or 'EOF'})") from exc
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        UnicodeDecodeError,
    ) as exc:
        if "truncated" in str(exc):  # e.g. "pickle data was truncated"
            raise DataError(f"{path}: truncated pickle ({exc})") from exc
        raise DataError(f"{path}: malformed pickle ({type(exc).__name__}: {exc})") from exc
    return obj


def check(obj: object, name: str) -> dict[str, dict[str, np.ndarray]]:
    """Validate an unpickled object against the MulT layout and normalize dtypes."""
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a dict of splits, found {type(obj).__name__}")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise DataError(f"{name}: missing splits {missing} (has: {sorted(map(str, obj))})")
    out = {split: _check_split(obj[split], f"{name}: split '{split}'", split) for split in SPLITS}
    first = SPLITS[0]
    for split in SPLITS[1:]:
        for m in MODALITIES:
            key = FILE_KEY[m]
            if out[split][key].shape[2] != out[first][key].shape[2]:
                raise DataError(
                    f"{name}: split '{split}': '{key}' has shape {out[split][key].shape}; "
                    f"split '{first}' has {out[first][key].shape[2]} features per step"
                )
    return out


def _check_split(d: object, where: str, split: str) -> dict[str, np.ndarray]:
    if not isinstance(d, dict):
        raise DataError(f"{where} is a {type(d).__name__}, expected a dict of arrays")
    need = [FILE_KEY[m] for m in MODALITIES] + [LABEL_KEY]
    missing = [k for k in need if k not in d]
    if missing:
        raise DataError(f"{where} lacks keys {missing} (has: {sorted(map(str, d))})")
    out: dict[str, np.ndarray] = {}
    n = None
    for m in MODALITIES:
        key = FILE_KEY[m]
        arr = d[key]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
            raise DataError(f"{where}: '{key}' must be a numeric numpy array, found {describe(arr)}")
        if arr.ndim != 3 or arr.shape[2] < 1:
            raise DataError(f"{where}: '{key}' has shape {arr.shape}; expected (N, T, D)")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise DataError(f"{where}: '{key}' has {arr.shape[0]} samples, other modalities {n}")
        out[key] = arr.astype(np.float32, copy=False)
    if n == 0:
        raise DataError(f"{where} is empty (0 samples)")
    labels = d[LABEL_KEY]
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "fiu" or labels.size != n:
        raise DataError(f"{where}: '{LABEL_KEY}' must be {n} numbers (shape (N, 1, 1)), found {describe(labels)}")
    if labels.ndim == 0 or labels.shape[0] != n:
        raise DataError(f"{where}: '{LABEL_KEY}' has shape {labels.shape}; expected ({n}, 1, 1)")
    out[LABEL_KEY] = labels.astype(np.float32).reshape(n, 1, 1)
    out[ID_KEY] = _ids(d.get(ID_KEY), n, where, split)
    return out


def _ids(ids: object, n: int, where: str, split: str) -> np.ndarray:
    """Segment ids as a 1-D str array; rows of several fields are joined with '_'."""
    if ids is None:
        log.warning("%s has no 'id': naming segments %s_<index>", where, split)
        return np.array([f"{split}_{i}" for i in range(n)])
    ids = np.asarray(ids)
    if ids.ndim == 0 or ids.shape[0] != n:
        raise DataError(f"{where}: 'id' has shape {ids.shape}; expected {n} rows")
    rows = ids.reshape(n, -1)
    return np.array(["_".join(_text(v) for v in row) for row in rows])


def _text(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def describe(x: object) -> str:
    """A found value in a message: an array's dtype and shape, else its type."""
    if isinstance(x, np.ndarray):
        return f"array of dtype {x.dtype} and shape {x.shape}"
    return type(x).__name__
