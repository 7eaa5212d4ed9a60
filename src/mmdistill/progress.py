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
    """The subset of tqdm the pipeline uses: iterate, ``total``, ``desc``, ``disable``."""

    def __init__(
        self,
        iterable: Iterable,
        total: int | None = None,
        desc: str = "",
        disable: bool = False,
        file: TextIO | None = None,
        mininterval: float = 30.0,
        **_: Any,
    ):
        self.iterable, self.total, self.desc, self.disable = iterable, total, desc, disable
        self.file = file or sys.stderr
        self.mininterval = mininterval

    def __iter__(self) -> Iterator:
        last = t0 = time.monotonic()
        for i, item in enumerate(self.iterable, start=1):
            yield item
            now = time.monotonic()
            if not self.disable and (now - last >= self.mininterval or i == self.total):
                last = now
                of = f"/{self.total}" if self.total else ""
                print(f"{self.desc}: {i}{of} ({now - t0:.0f} s)", file=self.file, flush=True)


def progress(iterable: Iterable, **kwargs: Any):
    """``tqdm(iterable, **kwargs)``, or :class:`PlainProgress` when tqdm is not installed."""
    global _warned
    if _tqdm is not None:
        return _tqdm(iterable, **kwargs)
    if not _warned and not kwargs.get("disable"):
        print("tqdm is not installed: plain progress lines instead of bars", file=sys.stderr)
        _warned = True
    return PlainProgress(iterable, **kwargs)
