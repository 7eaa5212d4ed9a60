"""Shared fixtures: the real parameters, shrunk (see tests/tiny.yaml)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

from mmdistill.registry import deep_merge

ROOT = Path(__file__).resolve().parents[1]


def tiny_params() -> dict:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return deep_merge(base, yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text()))


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(tiny_params())


def subprocess_env() -> dict:
    """Environment for pipeline subprocesses: this interpreter's bin first on PATH, one thread."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
