"""Table 1's numbers, derived here from the runs' own metrics.json and profile.json and
compared with what the report wrote: mean and sample sd over seeds, parameters, latency, the
paper's columns and the cost line.

`test_table_numbers_from_constructed_runs` does it in process on a results tree written by
the test (known numbers, three seeds, every row of the tiny study); `test_pipeline_table_numbers`
on the session's tiny Snakemake run (`tiny_run`, tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmdistill.registry import Registry, Run
from mmdistill.report.stats import add_paired_stats
from mmdistill.report.table import collect_runs, cost_ratios, table1, to_markdown

# Paper 002, Table 1 (CMU-MOSEI unaligned, accuracy and F1 in %), transcribed per row name of
# params.yaml; rows the paper does not have (Hinton KD, MSD, DistillVLM) have no value.
PAPER_BY_ROW = {
    "complete": (49.779, 48.817),
    "video": (49.621, 48.542),
    "language": (49.217, 47.250),
    "audio": (49.217, 47.232),
    "nokd": (41.296, 32.142),
    "c1_edam_s_attn": (44.137, 36.286),
    "c2_crd_final": (43.711, 33.281),
    "c2_crd_penult": (42.576, 35.565),
    "c2_crd_attn": (43.837, 35.912),
    "c3_crd_final": (43.154, 32.863),
    "c3_crd_penult": (42.901, 34.467),
    "c4_crd_final": (43.584, 33.260),
    "c4_crd_penult": (43.232, 35.115),
    "c5_crd_final": (42.731, 32.513),
    "c5_crd_penult": (43.732, 35.632),
    "c5_crd_post": (43.837, 35.711),
    "c5_crd_attn": (44.031, 36.110),
    "c5_edam_s_attn": (44.231, 36.332),
    "c5_edam_t_attn": (43.993, 36.189),
}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def expected_rows(reg: Registry) -> dict[tuple[str, str], dict]:
    """(network, name) -> the numbers a Table 1 row must show, from the files alone."""
    profile = read(reg.profile())
    out = {}
    for role, names in (("teacher", reg.teachers), ("student", reg.students)):
        for name in names:
            ms = [read(reg.metrics(Run(role, name, seed))) for seed in reg.seeds]
            acc = [100 * m["test"]["acc7"] for m in ms]
            f1 = [100 * m["test"]["f1_weighted"] for m in ms]
            arch = profile["architectures"][profile["rows"][f"{role}s/{name}"]]
            out[(role.capitalize(), name)] = {
                "n_seeds": len(ms),
                "acc_mean": statistics.fmean(acc),
                "acc_std": statistics.stdev(acc) if len(acc) > 1 else math.nan,
                "f1_mean": statistics.fmean(f1),
                "f1_std": statistics.stdev(f1) if len(f1) > 1 else math.nan,
                "f1_macro_mean": statistics.fmean(100 * m["test"]["f1_macro"] for m in ms),
                "valid_acc_mean": statistics.fmean(100 * m["valid"]["acc7"] for m in ms),
                "parameters": arch["parameters"],
                **{f"latency_b{bs}_ms": v["median_ms"] for bs, v in arch["latency"].items()},
                "paper_acc": PAPER_BY_ROW.get(name, (math.nan, math.nan))[0],
                "paper_f1": PAPER_BY_ROW.get(name, (math.nan, math.nan))[1],
            }
    return out


def expected_cost_line(reg: Registry, rows: dict) -> dict:
    """The best distilled student by mean validation accuracy against the complete teacher."""
    distilled = [n for n, s in reg.students.items() if s.distils]
    best = max(distilled, key=lambda n: rows[("Student", n)]["valid_acc_mean"])
    teacher = next(n for n, t in reg.teachers.items() if set(t.branches) == {"V", "A", "L"})
    s, t = rows[("Student", best)], rows[("Teacher", teacher)]
    return {
        "best_student": best,
        "teacher": teacher,
        "student_parameters": s["parameters"],
        "teacher_parameters": t["parameters"],
        "parameter_ratio": t["parameters"] / s["parameters"],
        "student_latency_ms": s["latency_b1_ms"],
        "teacher_latency_ms": t["latency_b1_ms"],
        "latency_reduction": 1 - s["latency_b1_ms"] / t["latency_b1_ms"],
    }


def same(a, b, tol: float) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == pytest.approx(b, abs=tol, rel=0)


def check_table(table: pd.DataFrame, reg: Registry, tol: float) -> dict:
    rows = expected_rows(reg)
    got = {(r.network, r.name): r for r in table.itertuples()}
    assert set(got) == set(rows)
    for key, want in rows.items():
        for col, value in want.items():
            if col == "valid_acc_mean":
                continue
            assert same(getattr(got[key], col), value, tol), (key, col, getattr(got[key], col), value)
    return rows


def check_markdown(md: str, table: pd.DataFrame, rows: dict, cost: dict) -> None:
    lines = []  # the rows of the markdown table, in order
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 9 and cells[0] in ("Teacher", "Student"):
            lines.append(cells)
    assert len(lines) == len(table)
    for r, cells in zip(table.itertuples(), lines):
        assert cells[:2] == [r.network, r.description]
        want = rows[(r.network, r.name)]
        assert cells[2] == str(want["n_seeds"])
        assert cells[3] == f"{want['acc_mean']:.2f} ± {want['acc_std']:.2f}", (r.name, cells[3])
        assert cells[5] == f"{want['f1_mean']:.2f} ± {want['f1_std']:.2f}", (r.name, cells[5])
        assert cells[4] == ("–" if math.isnan(want["paper_acc"]) else f"{want['paper_acc']:.3f}")
        assert cells[6] == ("–" if math.isnan(want["paper_f1"]) else f"{want['paper_f1']:.3f}")
        assert cells[7] == f"{want['parameters']:,}"
        assert cells[8] == f"{want['latency_b1_ms']:.2f}"
    m = re.search(
        r"Best distilled student \(mean validation accuracy\) `(\w+)`: ([\d,]+) parameters vs ([\d,]+) for the "
        r"complete teacher `(\w+)` \(([\d.]+)x fewer; paper: 2\.5x\), batch-1 latency ([\d.]+) ms vs ([\d.]+) ms "
        r"\((-?\d+)% less; paper: 22% less\)",
        md,
    )
    assert m, md[-800:]
    assert m.group(1) == cost["best_student"] and m.group(4) == cost["teacher"]
    assert m.group(2) == f"{cost['student_parameters']:,}" and m.group(3) == f"{cost['teacher_parameters']:,}"
    assert m.group(5) == f"{cost['parameter_ratio']:.2f}"
    assert m.group(6) == f"{cost['student_latency_ms']:.2f}" and m.group(7) == f"{cost['teacher_latency_ms']:.2f}"
    assert m.group(8) == f"{100 * cost['latency_reduction']:.0f}"


# ---------------------------------------------------------------------- constructed runs
def write_results(reg: Registry, rng: np.random.Generator) -> None:
    """metrics.json of every run and a profile.json, with numbers drawn at random."""
    archs, rows = {}, {}
    for role, names in (("teacher", reg.teachers), ("student", reg.students)):
        for i, name in enumerate(names):
            key = f"{role}-arch-{i % 3}"  # rows share architectures, as in a real profile
            archs.setdefault(
                key,
                {
                    "parameters": int(rng.integers(1_000, 900_000)),
                    "latency": {
                        str(bs): {"median_ms": float(rng.uniform(0.1, 40)), "p10_ms": 0.0, "p90_ms": 50.0}
                        for bs in (1, 32)
                    },
                    "blueprint": {},
                },
            )
            rows[f"{role}s/{name}"] = key
            for seed in reg.seeds:
                path = reg.metrics(Run(role, name, seed))
                path.parent.mkdir(parents=True, exist_ok=True)
                score = lambda: float(rng.integers(0, 200)) / 200  # noqa: E731 (a test split of 200)
                metrics = {
                    "test": {"acc7": score(), "f1_weighted": score(), "f1_macro": score(), "mae": 1.0, "pearson": 0.1},
                    "valid": {"acc7": score()},
                    "parameters": 0,  # the table takes parameters from the profile
                    "epochs_run": 3,
                    "best_epoch": 2,
                    "train_seconds": 1.0,
                }
                path.write_text(json.dumps(metrics))
    reg.profile().parent.mkdir(parents=True, exist_ok=True)
    reg.profile().write_text(json.dumps({"device": "cpu", "threads": 1, "architectures": archs, "rows": rows}))


@pytest.mark.parametrize("seed", [0, 1])
def test_table_numbers_from_constructed_runs(params, tmp_path, seed):
    params["seeds"] = [0, 1, 2]
    reg = Registry(params, root=tmp_path)
    write_results(reg, np.random.default_rng(seed))
    runs = collect_runs(reg)
    assert len(runs) == len(list(reg.runs()))
    table = add_paired_stats(table1(reg, runs, read(reg.profile())), reg, runs)
    rows = check_table(table, reg, tol=1e-9)
    cost = expected_cost_line(reg, rows)
    ratios = cost_ratios(table, reg, runs)
    assert ratios.keys() == cost.keys()
    for k, v in cost.items():
        assert same(ratios[k], v, 1e-12) if isinstance(v, float) else ratios[k] == v, k
    md = to_markdown(table, ratios, read(reg.profile()), reg.source)
    check_markdown(md, table, rows, cost)
    # the paper's order: the no-KD row first, each teacher before the students distilling from it
    names = list(table.name)
    assert names[0] == "nokd"
    for s in reg.students.values():
        if s.distils:
            assert names.index(s.teacher) < names.index(s.name)


def test_missing_metrics_name_the_run(params, tmp_path):
    reg = Registry(params, root=tmp_path)
    write_results(reg, np.random.default_rng(0))
    gone = Run("student", "c5_hinton", reg.seeds[-1])
    reg.metrics(gone).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{gone.id}: metrics missing at {reg.metrics(gone)}")):
        collect_runs(reg)


# ---------------------------------------------------------------------- the pipeline's table
@pytest.mark.e2e
def test_pipeline_table_numbers(tiny_run):
    reg = Registry.from_file(tiny_run / "params.yaml")
    table = pd.read_csv(reg.table("csv"))
    rows = check_table(table, reg, tol=6e-5)  # the CSV keeps 4 decimals
    check_markdown(reg.table("md").read_text(), table, rows, expected_cost_line(reg, rows))
