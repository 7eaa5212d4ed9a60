"""Freed host memory is kept for reuse: repeated large temporaries stop page-faulting."""

import os
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, torch
from mmdistill.allocator import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
x = torch.randn(8, 3, 500, 500)  # 24 MB
for _ in range(8):  # warm-up: the heap grows to its working size (a few rounds)
    y = torch.cat([x, x]).softmax(-1); del y
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    # two 48 MB temporaries per round (above glibc's largest mmap threshold, 32 MB)
    y = torch.cat([x, x]).softmax(-1); del y
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
print(applied, faults)
"""


def _probe(env_value: str | None) -> tuple[bool, float]:
    env = dict(os.environ)
    env.pop("MMDISTILL_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["MMDISTILL_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_memory_removes_page_faults_and_opt_out_restores_defaults():
    applied, faults = _probe(None)
    default_applied, default_faults = _probe("0")
    assert applied and not default_applied
    # glibc's defaults fault in every page of both 48 MB temporaries (~23,000 4 kB pages a round)
    assert default_faults > 10000
    assert faults < default_faults / 10
