"""Progress bars: tqdm when it is installed, otherwise a plain line every ``mininterval`` seconds.

A bare GPU machine may lack tqdm (torch does not need it); training must still run there, so
its absence costs only the bar's looks, and it is said once on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # optional: see the module docstring
    _tqdm = None

_warned = False


class PlainProgress:
    """The subset of tqdm the pipeline uses: iterate over ``iterable`` or count with ``update``
    (as a context manager), ``total``, ``initial``, ``unit``, ``desc``, ``disable``."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        disable: bool = False,
        file: TextIO | None = None,
        mininterval: float = 30.0,
        initial: int = 0,
        unit: str = "it",
        **_: Any,
    ):
        self.iterable, self.total, self.desc, self.disable = iterable, total, desc, disable
        self.file = file or sys.stderr
        self.mininterval = mininterval
        self.n, self.unit = initial, unit
        self._t0 = self._last = time.monotonic()

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.disable or not (force or now - self._last >= self.mininterval):
            return
        self._last = now
        of = f"/{self.total}" if self.total else ""
        unit = "" if self.unit == "it" else f" {self.unit}"
        print(f"{self.desc}: {self.n}{of}{unit} ({now - self._t0:.0f} s)", file=self.file, flush=True)

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
            self._report(force=self.n == self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._report(force=self.n == self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable | None = None, **kwargs: Any):
    """``tqdm(iterable, **kwargs)``, or :class:`PlainProgress` when tqdm is not installed."""
    global _warned
    if _tqdm is not None:
        return _tqdm(iterable, **kwargs)
    if not _warned and not kwargs.get("disable"):
        print("tqdm is not installed: plain progress lines instead of bars", file=sys.stderr)
        _warned = True
    return PlainProgress(iterable, **kwargs)
