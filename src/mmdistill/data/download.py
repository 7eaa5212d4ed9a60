"""Resumable downloads with the standard library (urllib), a progress bar and a checksum.

The bytes go to ``<dest>.part``; an interrupted transfer is resumed from its size with an HTTP
``Range`` request (a server that ignores the range sends the whole file with status 200, and
the part file is then restarted from zero). Only a complete file (as long as the server's
``Content-Length`` says, and with the expected sha256 when one is given) is renamed onto
``dest``, so ``dest`` existing means the download finished. Two processes must not download
to the same ``dest`` at the same time (they would share the part file).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from mmdistill.progress import progress as tqdm  # tqdm when installed

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read
USER_AGENT = "mmdistill-download/1 (python urllib)"


class DownloadError(RuntimeError):
    """No URL delivered the file; the message lists every URL tried with its reason."""


class _Transient(Exception):
    """A failure worth retrying on the same URL (dropped connection, short body, 5xx)."""


class _Permanent(Exception):
    """A failure that retrying the same URL cannot fix (404, bad URL, checksum mismatch)."""


def sha256sum(path: str | Path, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch(
    urls: list[str],
    dest: str | Path,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30,
    attempts: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Download the first URL of ``urls`` that works to ``dest`` and return ``dest``.

    Each URL gets up to ``attempts`` tries for transient failures (dropped connection, short
    body, timeout, HTTP 5xx), each resuming the part file, with ``backoff * 2**k`` seconds
    between them; a permanent failure (HTTP 4xx, bad URL, sha256 mismatch) moves on to the
    next URL. A ``dest`` that already exists (and matches ``sha256`` when given) is returned
    without any network access.
    """
    dest = Path(dest)
    if not urls:
        raise DownloadError(f"no URL given for {dest.name}")
    sha256 = sha256.lower() if sha256 else None
    if dest.exists():
        if sha256 is None or sha256sum(dest) == sha256:
            log.info("%s already present, not downloading", dest)
            return dest
        log.warning("%s exists but its sha256 differs from %s: downloading again", dest, sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    failures: list[tuple[str, str]] = []
    for url in urls:
        try:
            _fetch_one(url, part, dest.name, sha256, progress, timeout, attempts, backoff)
        except (_Transient, _Permanent) as exc:
            log.warning("download of %s from %s failed: %s", dest.name, url, exc)
            failures.append((url, str(exc)))
            continue
        part.replace(dest)
        if sha256 is None:
            log.warning("%s: downloaded from %s with no sha256 to check: the file is unverified", dest, url)
        return dest
    tried = "\n".join(f"  {url}: {reason}" for url, reason in failures)
    raise DownloadError(f"could not download {dest.name} to {dest}; tried:\n{tried}")


def _fetch_one(
    url: str,
    part: Path,
    name: str,
    sha256: str | None,
    progress: bool,
    timeout: float,
    attempts: int,
    backoff: float,
) -> None:
    """Complete ``part`` from ``url`` (resuming) and check its checksum, or raise."""
    last: Exception | None = None
    for k in range(attempts):
        if k:
            time.sleep(backoff * 2 ** (k - 1))
        resumed_from = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, name, progress, timeout)
        except _Transient as exc:
            last = exc
            continue
        if sha256 is None:
            return
        actual = sha256sum(part)
        if actual == sha256:
            return
        part.unlink()
        msg = f"sha256 mismatch for {name}: expected {sha256}, got {actual} (file deleted)"
        if resumed_from == 0:
            raise _Permanent(msg)
        # the stale part file may have caused it: one more try from zero counts as an attempt
        last = _Transient(msg + f"; the download had resumed at byte {resumed_from}")
    raise _Transient(f"gave up after {attempts} attempts; last error: {last}")


def _transfer(url: str, part: Path, name: str, progress: bool, timeout: float) -> None:
    """One HTTP request: append the missing bytes to ``part``; raise if it ends short."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        req = urllib.request.Request(url, headers=headers)
    except ValueError as exc:  # not a URL
        raise _Permanent(f"invalid URL ({exc})") from exc
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and _complete_range(exc.headers.get("Content-Range"), have):
            return  # the part file already holds the whole file
        if exc.code == 416:
            part.unlink(missing_ok=True)  # the part file is longer than the file: restart
            raise _Transient(f"HTTP 416 for a resume at byte {have}; restarting from zero") from exc
        kind = _Transient if exc.code >= 500 else _Permanent
        raise kind(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _Transient(f"cannot connect ({exc.reason})") from exc
    except ValueError as exc:  # unknown URL type
        raise _Permanent(f"invalid URL ({exc})") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    with resp:
        status = getattr(resp, "status", None)
        start = have if status == 206 else 0
        if status == 206:
            first = _range_start(resp.headers.get("Content-Range"))
            if first != have:
                part.unlink()  # the next attempt starts from zero
                raise _Transient(f"server answered a resume at byte {have} with range {first}")
        elif have:
            log.info("%s ignores Range: restarting %s from zero", url, name)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        mode = "ab" if start else "wb"
        written = start
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=name,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                while block := resp.read(CHUNK):
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                raise _Transient(f"connection lost at byte {written} ({type(exc).__name__})") from exc
    if total is not None and written != total:
        raise _Transient(f"connection lost: got {written} of {total} bytes")


def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range or "")
    return int(m.group(1)) if m else None


def _complete_range(content_range: str | None, have: int) -> bool:
    m = re.match(r"bytes \*/(\d+)", content_range or "")
    return bool(m) and int(m.group(1)) == have
