"""The project's linters, run by the test command: ruff (lint and format, settings in
pyproject.toml) on the Python sources, snakefmt on the workflow, and Snakemake's own lint
(whose remaining findings must each be explained where they are left)."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import ROOT, make_project, subprocess_env


def check(cmd: list[str], cwd=ROOT) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def test_ruff_check():
    check(["ruff", "check", "--no-cache", "src", "tests"])


def test_ruff_format():
    check(["ruff", "format", "--check", "--no-cache", "src", "tests"])


def test_snakefmt():
    check(["snakefmt", "--check", "Snakefile", "workflow/"])


# `snakemake --lint` exits 1 on any finding. The findings left on purpose, each explained in a
# comment of the Snakefile; anything else fails the test.
ALLOWED_LINTS = {
    # every rule runs this project's package, installed in Snakemake's own environment
    "Specify a conda environment or container for each rule.": "Specify a conda environment or",
}


def test_snakemake_lint(tmp_path):
    # in a copy, so that Snakemake's bookkeeping (.snakemake/) stays out of the checkout
    project = make_project(tmp_path / "proj", yaml.safe_load((ROOT / "params.yaml").read_text()))
    proc = subprocess.run(
        ["snakemake", "--lint"], cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    findings = set(re.findall(r"^\s+\* (.+?):$", output, flags=re.M))
    assert proc.returncode == 0 or findings, f"`snakemake --lint` exited {proc.returncode} without a finding:\n{output}"
    unexplained = findings - set(ALLOWED_LINTS)
    assert not unexplained, f"`snakemake --lint` findings not explained in the Snakefile: {unexplained}\n{output}"
    snakefile = (ROOT / "Snakefile").read_text()
    for finding in findings:
        assert ALLOWED_LINTS[finding] in snakefile, f"the Snakefile no longer explains: {finding}"
