"""Atomic file output: every file is written to a unique temporary name beside its target
and renamed into place, so a killed job never leaves a half-written file that a rerun would
take for finished. What a kill leaves is the hidden temporary file (``.name.XXXXXXXX.tmp.ext``);
the next write of the same target removes it, and :func:`clean_temporaries` clears a folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

# what atomic_path names its temporary files: "." + target name + "." + mkstemp's 8 characters + ".tmp" + suffix
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$")


def clean_temporaries(directory: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in ``directory`` (only
    those of ``target``, a file name, when given); return what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        m = _TEMPORARY.match(p.name)
        if m and (target is None or m["target"] == target) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary name is unique per call (pid + random part), so parallel jobs never
    share it. ``suffix`` keeps an extension some writers insist on (e.g. ``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_temporaries(path.parent, path.name)  # one writer per target: any other is a killed one's
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; outputs follow the umask
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that holds more than tensors and plain data."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain data (dicts, lists, numbers,
    strings) only. Unpickling anything else can run code, and checkpoints travel through shared
    DVC remotes, so a file holding other objects is refused with a :class:`CheckpointError`."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain data, and unpickling "
            f"them could run code ({first}). The checkpoints this project writes hold none; train the run "
            "again, or fetch the file from a source you trust."
        ) from exc
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or not written by torch.save): {exc}"
        ) from exc
