"""download.fetch past the easy path, against a local HTTP server on 127.0.0.1: wrong bytes
on one mirror move on to the next, a server error is retried on the same URL, a resumed
download whose checksum fails is retried from zero, and HTTP 416 (a resume at or past the
end of the file) either finishes the download or restarts it."""

from __future__ import annotations

import hashlib
import re
import time
from http.server import BaseHTTPRequestHandler

import pytest

from mmdistill.data.download import DownloadError, fetch, part_path
from tests.conftest import serve_http

PAYLOAD = bytes(range(251)) * 300  # 75300 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """/good honours Range (416 with ``bytes */N`` for a range at or past the end);
    /wrong the same with other bytes of the same length; /once503 answers 503 to its first
    request, then like /good (/once500 likewise with 500); /always503 always 503; /nolength sends
    the body without Content-Length; /norangeheader answers a resume with 206
    but no Content-Range; /stall waits 2 s before answering (404)."""

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                first_time = sum(p == self.path for p, _ in outer.requests) == 1
                if self.path == "/always503" or (self.path == "/once503" and first_time):
                    self.send_error(503, "Service Unavailable")
                    return
                if self.path == "/once500" and first_time:
                    self.send_error(500, "Internal Server Error")
                    return
                if self.path == "/nolength":  # the end of the body is the end of the connection
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(PAYLOAD)
                    return
                if self.path == "/stall":
                    time.sleep(2)
                if self.path not in ("/good", "/wrong", "/once503", "/once500", "/norangeheader"):
                    self.send_error(404, "Not Found")
                    return
                body = PAYLOAD[::-1] if self.path == "/wrong" else PAYLOAD
                m = re.match(r"bytes=(\d+)-$", rng or "")
                start = int(m.group(1)) if m else 0
                if start >= len(body) and m:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start and self.path != "/norangeheader":
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.handler = Handler
        self.base = ""  # set while served

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture()
def server():
    s = Server()
    with serve_http(s.handler) as s.base:
        yield s


def test_checksum_mismatch_moves_on_to_the_next_url(server, tmp_path):
    dest = tmp_path / "file.bin"
    fetch([server.url("/wrong"), server.url("/good")], dest, sha256=SHA, progress=False, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    # a fresh download with wrong bytes is not retried on the same URL: the next one is tried
    assert [p for p, _ in server.requests] == ["/wrong", "/good"]
    assert server.requests[1][1] is None  # and from zero: nothing of the wrong bytes is kept
    assert not part_path(dest).exists()


@pytest.mark.parametrize("path", ["/once503", "/once500"])
def test_server_error_is_retried_on_the_same_url(server, tmp_path, path):
    dest = tmp_path / "file.bin"
    fetch([server.url(path)], dest, sha256=SHA, progress=False, attempts=2, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == [path, path]


def test_body_without_content_length(server, tmp_path):
    dest = tmp_path / "file.bin"
    fetch([server.url("/nolength")], dest, sha256=SHA, progress=False, attempts=1)
    assert dest.read_bytes() == PAYLOAD


def test_server_errors_use_up_the_attempts_then_the_next_url(server, tmp_path):
    dest = tmp_path / "file.bin"
    fetch([server.url("/always503"), server.url("/good")], dest, progress=False, attempts=3, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/always503"] * 3 + ["/good"]
    with pytest.raises(DownloadError, match=r"(?s)gave up after 2 attempts.*HTTP 503"):
        fetch([server.url("/always503")], tmp_path / "other.bin", progress=False, attempts=2, backoff=0)


def test_resumed_download_with_wrong_checksum_is_retried_from_zero(server, tmp_path):
    dest = tmp_path / "file.bin"
    half = len(PAYLOAD) // 2
    part_path(dest).write_bytes(PAYLOAD[::-1][:half])  # a stale part file from other bytes
    fetch([server.url("/good")], dest, sha256=SHA, progress=False, attempts=2, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    # the resume's result fails the checksum; the same URL is tried again, from byte 0
    assert server.requests == [("/good", f"bytes={half}-"), ("/good", None)]
    assert not part_path(dest).exists()


def test_resumed_download_with_wrong_checksum_counts_as_an_attempt(server, tmp_path):
    dest = tmp_path / "file.bin"
    part_path(dest).write_bytes(PAYLOAD[::-1][:100])
    with pytest.raises(DownloadError, match=r"sha256 mismatch.*resumed at byte 100"):
        fetch([server.url("/good")], dest, sha256=SHA, progress=False, attempts=1, backoff=0)
    assert not dest.exists() and not part_path(dest).exists()


def test_http_416_for_a_complete_part_file_finishes_the_download(server, tmp_path):
    dest = tmp_path / "file.bin"
    part_path(dest).write_bytes(PAYLOAD)  # killed after the last byte, before the rename
    fetch([server.url("/good")], dest, sha256=SHA, progress=False, attempts=1, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/good", f"bytes={len(PAYLOAD)}-")]  # one request, nothing re-sent


def test_http_416_for_a_part_file_longer_than_the_file_restarts(server, tmp_path):
    dest = tmp_path / "file.bin"
    part_path(dest).write_bytes(PAYLOAD + b"junk")
    fetch([server.url("/good")], dest, sha256=SHA, progress=False, attempts=2, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/good", f"bytes={len(PAYLOAD) + 4}-"), ("/good", None)]
    dest.unlink()
    part_path(dest).write_bytes(PAYLOAD + b"junk")
    with pytest.raises(DownloadError, match=r"HTTP 416 for a resume at byte 75304; restarting from zero"):
        fetch([server.url("/good")], dest, progress=False, attempts=1, backoff=0)
    assert not part_path(dest).exists()


def test_resume_answered_without_a_content_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "file.bin"
    part_path(dest).write_bytes(PAYLOAD[:1000])
    fetch([server.url("/norangeheader")], dest, sha256=SHA, progress=False, attempts=2, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/norangeheader", "bytes=1000-"), ("/norangeheader", None)]


def test_defaults_retry_three_times_with_doubling_waits(server, tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr("mmdistill.data.download.time.sleep", waits.append)
    with pytest.raises(DownloadError, match=r"gave up after 3 attempts"):
        fetch([server.url("/always503")], tmp_path / "f.bin", progress=False)
    assert waits == [1.0, 2.0] and len(server.requests) == 3


def test_a_stalled_server_times_out(server, tmp_path):
    with pytest.raises(DownloadError, match=r"timed out"):
        fetch([server.url("/stall")], tmp_path / "f.bin", progress=False, timeout=0.3, attempts=1)


def test_part_file_name_messages_and_progress(server, tmp_path, caplog, capsys):
    dest = tmp_path / "a" / "b" / "file.bin"  # missing folders are made
    assert part_path(dest) == tmp_path / "a" / "b" / "file.bin.part"  # the documented name
    fetch([server.url("/good")], dest, sha256=SHA.upper(), progress=True)
    assert dest.read_bytes() == PAYLOAD
    assert "file.bin" in capsys.readouterr().err  # the progress bar names the file
    caplog.set_level("INFO", logger="mmdistill.data.download")
    fetch([server.url("/good")], dest, sha256=SHA, progress=False)
    assert f"{dest} already present, not downloading" in caplog.text
    assert len(server.requests) == 1
    dest.write_bytes(b"other")
    with pytest.raises(DownloadError, match=r"(?s)could not download file\.bin to .*sha256 mismatch for file\.bin"):
        fetch([server.url("/wrong")], dest, sha256=SHA, progress=False, attempts=1)
    assert f"{dest} exists but its sha256 differs from {SHA}: downloading again" in caplog.text
    with pytest.raises(DownloadError, match=r"no URL given for file\.bin"):
        fetch([], dest)
