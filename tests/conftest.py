"""Shared fixtures: the real parameters, shrunk (see tests/tiny.yaml)."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mmdistill.registry import deep_merge

ROOT = Path(__file__).resolve().parents[1]


def tiny_params() -> dict:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return deep_merge(base, yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text()))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread avoids the cost of waking a second one on a busy machine.
    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(tiny_params())


def subprocess_env() -> dict:
    """Environment for pipeline subprocesses: this interpreter's bin first on PATH, one thread."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


PROJECT_FILES = ["Snakefile", "dvc.yaml", "workflow", "profiles", "src", ".dvcignore", ".gitignore", "pyproject.toml"]


def make_project(dest: Path, params: dict) -> Path:
    """A copy of the project (pipelines, package source) with ``params`` as its params.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"), symlinks=True)
        else:
            shutil.copy2(src, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> str:
    """Run a pipeline command; on failure the error carries its output and every job log."""
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        logs = (
            "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((cwd / "logs").rglob("*.log")))
            if (cwd / "logs").exists()
            else ""
        )
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}"
        )
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny study run once per test session with Snakemake (`results/table1.csv`: every
    run, Table 1, the figures); returns the project directory. Treat it as read-only: a test
    that changes params or outputs works on a copy (``shutil.copytree(tiny_run, dest,
    symlinks=True)`` keeps the modification times, so the copy is up to date too)."""
    project = make_project(tmp_path_factory.mktemp("tiny_run") / "proj", tiny_params())
    run(["snakemake", "--cores", "2", "results/table1.csv"], project)
    return project


@contextlib.contextmanager
def serve_http(handler) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def file_server(tmp_path):
    """A directory served on 127.0.0.1: (root, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_http(functools.partial(_QuietFiles, directory=str(root))) as base:
        yield root, base
