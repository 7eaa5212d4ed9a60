"""download.fetch against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import re
import socket
from http.server import BaseHTTPRequestHandler

import pytest

from mmdistill.data.download import DownloadError, fetch, part_path
from tests.conftest import serve_http

PAYLOAD = bytes(range(256)) * 400  # 102400 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A tiny file server whose paths misbehave on purpose.

    /good     serves PAYLOAD, honours Range
    /drop     first request: announces the full length, sends half, closes; then like /good
    /alwaysdrop  every request that starts at byte 0 is cut at half (Range requests succeed)
    /norange  ignores Range (always 200 with the whole body)
    /wrong    serves other bytes of the same length
    /missing  404
    """

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.dropped: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if self.path == "/missing":
                    self.send_error(404, "Not Found")
                    return
                body = PAYLOAD[::-1] if self.path == "/wrong" else PAYLOAD
                start = 0
                m = re.match(r"bytes=(\d+)-$", rng or "")
                if m and self.path != "/norange":
                    start = int(m.group(1))
                cut = self.path == "/alwaysdrop" and start == 0
                if self.path == "/drop" and "/drop" not in outer.dropped:
                    outer.dropped.add("/drop")
                    cut = True
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
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


def dead_url() -> str:
    """A URL on a port nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/file.bin"


def test_normal_download(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    out = fetch([server.url("/good")], dest, sha256=SHA, progress=True)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()


def test_dropped_connection_resumes_with_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    fetch([server.url("/drop")], dest, sha256=SHA, progress=False, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/drop", None), ("/drop", f"bytes={len(PAYLOAD) // 2}-")]


def test_resume_on_second_url(server, tmp_path):
    dest = tmp_path / "file.bin"
    fetch([server.url("/alwaysdrop"), server.url("/good")], dest, progress=False, attempts=1, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/good", f"bytes={len(PAYLOAD) // 2}-")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "file.bin"
    fetch([server.url("/alwaysdrop"), server.url("/norange")], dest, sha256=SHA, progress=False, attempts=1, backoff=0)
    assert dest.read_bytes() == PAYLOAD  # not half + whole


def test_checksum_mismatch_names_file_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as err:
        fetch([server.url("/wrong")], dest, sha256=SHA, progress=False, backoff=0)
    msg = str(err.value)
    actual = hashlib.sha256(PAYLOAD[::-1]).hexdigest()
    assert "file.bin" in msg and SHA in msg and actual in msg
    assert not dest.exists() and not part_path(dest).exists()


def test_first_url_404_then_second_works(server, tmp_path):
    dest = tmp_path / "file.bin"
    fetch([server.url("/missing"), server.url("/good")], dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/missing", "/good"]  # 404 is not retried


def test_all_urls_fail_names_each(server, tmp_path):
    urls = [server.url("/missing"), dead_url(), "not-a-url"]
    with pytest.raises(DownloadError) as err:
        fetch(urls, tmp_path / "file.bin", progress=False, attempts=2, backoff=0)
    msg = str(err.value)
    for url in urls:
        assert url in msg
    assert "404" in msg and "cannot connect" in msg and "invalid URL" in msg
    assert not (tmp_path / "file.bin").exists()


def test_existing_complete_file_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    assert fetch([dead_url()], dest, sha256=SHA, progress=False, attempts=1) == dest
    with pytest.raises(DownloadError):  # a wrong file is fetched again, here unsuccessfully
        fetch([dead_url()], dest, sha256="0" * 64, progress=False, attempts=1)
