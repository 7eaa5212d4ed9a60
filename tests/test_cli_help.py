"""The command line's help: every option of every step explained, and the steps listed in
pipeline order with an example each that the parser accepts."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

import pytest

from mmdistill.cli import EXAMPLES, build_parser
from tests.conftest import ROOT, subprocess_env

# The order the pipelines run the steps in (bench stands outside them, last).
PIPELINE_ORDER = ["validate", "download", "prepare", "train", "profile", "report", "robustness", "bench"]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def in_pipeline_order(steps: list[str]) -> bool:
    known = [s for s in steps if s in PIPELINE_ORDER]
    return known == sorted(known, key=PIPELINE_ORDER.index)


def test_steps_are_in_pipeline_order_with_one_example_each():
    steps = list(subparsers(build_parser()))
    assert set(PIPELINE_ORDER) <= set(steps)
    assert in_pipeline_order(steps), steps
    assert [step for step, _ in EXAMPLES] == steps, "every step needs one example, in the parser's order"


@pytest.mark.parametrize("step", list(subparsers(build_parser())))
def test_every_option_of_every_step_has_help(step):
    parser = subparsers(build_parser())[step]
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if a.help is not argparse.SUPPRESS and not (a.help or "").strip()
    ]
    assert not missing, f"`{step}` options without a help text: {missing}"


def test_top_level_help_lists_the_examples_in_pipeline_order():
    out = subprocess.run(
        [sys.executable, "-m", "mmdistill", "--help"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shown = re.findall(r"^  (\S+)\s+python -m mmdistill (\S+)", out, flags=re.M)
    assert [name for name, _ in shown] == [step for step, _ in EXAMPLES], out
    assert all(name == step for name, step in shown), out
    assert in_pipeline_order([name for name, _ in shown])


@pytest.mark.parametrize("step,example", EXAMPLES)
def test_each_example_parses_to_its_own_step(step, example):
    args = build_parser().parse_args(shlex.split(example))
    assert args.step == step
    assert args.func.__name__ == f"cmd_{step.replace('-', '_')}"
