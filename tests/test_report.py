"""Report: paired statistics (known answers), figures and the Snakemake HTML report.

The statistics are checked on hand-made numbers; the figures and the HTML report on the
session's tiny Snakemake run (`tiny_run`, tests/conftest.py).
"""

from __future__ import annotations

import logging
import math
import shutil
import struct
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mmdistill.io import read_json
from mmdistill.registry import ParamsError, Registry
from mmdistill.report.figures import FIGURES, FigureRows, make_figures
from mmdistill.report.stats import (
    add_paired_stats,
    baselines,
    format_difference,
    paired_differences,
    paired_test,
    paper_baseline,
    sign_flip_p,
)
from mmdistill.report.table import collect_runs
from tests.conftest import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- statistics
def test_paired_t_matches_scipy_and_hand_ci():
    a = np.array([45.0, 44.0, 46.0, 50.0])
    b = np.array([44.0, 42.0, 43.0, 44.0])  # differences 1, 2, 3, 6
    r = paired_test(a, b)
    ref = sps.ttest_rel(a, b)
    assert r.n == 4 and r.mean == pytest.approx(3.0)
    assert r.p_t == pytest.approx(ref.pvalue, rel=1e-12)
    # by hand: sd = sqrt(((1-3)^2 + (2-3)^2 + 0 + (6-3)^2) / 3) = sqrt(14/3); t_{0.975, 3} = 3.182446305284263
    half = 3.182446305284263 * math.sqrt(14 / 3) / math.sqrt(4)
    assert r.ci_low == pytest.approx(3.0 - half, abs=1e-9)
    assert r.ci_high == pytest.approx(3.0 + half, abs=1e-9)
    assert not r.holds  # the interval [-0.44, 6.44] contains 0


def test_paired_ci_excluding_zero_holds():
    r = paired_test(np.array([3.0, 4.0, 5.0]), np.array([1.0, 1.5, 2.0]))  # differences 2, 2.5, 3
    assert r.ci_low > 0 and r.holds
    assert r.p_t == pytest.approx(sps.ttest_rel([3.0, 4.0, 5.0], [1.0, 1.5, 2.0]).pvalue)


def test_sign_flip_exact():
    # |sums| over the 8 sign patterns of (1, 2, 3): 6, 4, 2, 0, 0, 2, 4, 6
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 8)
    assert sign_flip_p(np.array([1.0, -2.0, 3.0])) == pytest.approx(6 / 8)  # observed |sum| 2
    assert paired_test(np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])).p_perm == pytest.approx(2 / 8)


def test_paired_degenerate_cases():
    one = paired_test(np.array([50.0]), np.array([48.0]))
    assert one.n == 1 and one.mean == 2.0
    assert all(math.isnan(v) for v in (one.ci_low, one.ci_high, one.p_t, one.p_perm))
    same = paired_test(np.array([40.0, 41.0]), np.array([40.0, 41.0]))
    assert same.mean == 0.0 and same.p_perm == 1.0 and math.isnan(same.ci_low) and math.isnan(same.p_t)
    shift = paired_test(np.array([41.0, 42.0, 43.0]), np.array([40.0, 41.0, 42.0]))  # sd 0: t undefined
    assert shift.mean == 1.0 and math.isnan(shift.ci_high) and math.isnan(shift.p_t) and not shift.holds
    assert shift.p_perm == pytest.approx(2 / 8)
    # the same difference up to float rounding (accuracies are multiples of 100 / n_test)
    a, b = 100 * (np.array([5, 6]) / 48), 100 * (np.array([7, 8]) / 48)  # as collect_runs computes them
    assert (a - b).std(ddof=1) > 0  # ~1e-15
    rounded = paired_test(a, b)
    assert rounded.mean == pytest.approx(-100 * 2 / 48) and math.isnan(rounded.ci_low) and not rounded.holds
    with pytest.raises(ValueError, match="same length"):
        paired_test(np.array([1.0, 2.0]), np.array([1.0]))


def test_paired_differences_pair_by_seed(params):
    params["seeds"] = [0, 1, 2]
    reg = Registry(params)
    runs = pd.DataFrame(
        [  # rows deliberately out of seed order
            {"role": "student", "name": "nokd", "seed": 2, "acc": 50.0, "f1": 30.0},
            {"role": "student", "name": "c5_hinton", "seed": 0, "acc": 50.0, "f1": 31.0},
            {"role": "student", "name": "nokd", "seed": 0, "acc": 48.0, "f1": 30.0},
            {"role": "student", "name": "c5_hinton", "seed": 2, "acc": 54.0, "f1": 31.0},
            {"role": "student", "name": "nokd", "seed": 1, "acc": 49.0, "f1": 30.0},
            {"role": "student", "name": "c5_hinton", "seed": 1, "acc": 52.0, "f1": 31.0},
        ]
    )
    d = paired_differences(reg, runs).set_index("name")
    row = d.loc["c5_hinton"]
    assert row.baseline == "nokd" and row.n_pairs == 3
    assert row.d_acc == pytest.approx(3.0)  # 2, 3, 4
    assert row.p_acc == pytest.approx(sps.ttest_rel([50.0, 52.0, 54.0], [48.0, 49.0, 50.0]).pvalue)
    assert row.d_f1 == 1.0 and math.isnan(row.d_f1_ci_low)  # the same difference at every seed
    assert d.loc["c2_crd_final"].n_pairs == 0 and math.isnan(d.loc["c2_crd_final"].d_acc)
    assert "nokd" not in d.index  # the baseline is not compared with itself

    table = pd.DataFrame({"network": ["Student", "Teacher", "Student"], "name": ["nokd", "complete", "c5_hinton"]})
    out = add_paired_stats(table, reg, runs)
    assert math.isnan(out.d_acc[0]) and math.isnan(out.d_acc[1]) and out.d_acc[2] == pytest.approx(3.0)
    assert format_difference(out.iloc[2], "f1") == "+1.00 (sd 0)"
    assert format_difference(out.iloc[2], "acc").startswith("+3.00 [")
    assert format_difference(out.iloc[2], "acc").endswith("✓")  # CI [0.52, 5.48] excludes 0
    assert format_difference(out.iloc[0], "acc") == "–"


def test_baseline_of_same_architecture(params):
    """Every distilled row is paired with the no-KD student of its own network (configuration
    and proxies); rows without one fall back to the paper's single no-KD row."""
    pairs = baselines(Registry(params))
    assert pairs["c1_edam_s_attn"] == "nokd_c1"  # 9 transformers
    assert pairs["c5_edam_t_attn"] == "nokd_c5_full"  # configuration 5 with full-length proxies
    assert pairs["c5_crd_final"] == pairs["c5_edam_s_attn"] == "nokd"  # the paper's architecture
    assert pairs["c2_crd_final"] == "nokd"  # no no-KD row of configuration 2: the paper's row
    assert "nokd_c1" not in pairs and "nokd_c5_full" not in pairs
    assert paper_baseline(Registry(params)) == "nokd"
    # the paper's row stays the paper's even when listed after the others
    params["students"] = {"nokd_c1": params["students"]["nokd_c1"], **params["students"]}
    assert paper_baseline(Registry(params)) == "nokd"
    # without the per-architecture rows, everything falls back to the paper's row
    for extra in ("nokd_c1", "nokd_c5_full"):
        del params["students"][extra]
    assert set(baselines(Registry(params)).values()) == {"nokd"}
    params["students"] = {k: v for k, v in params["students"].items() if v["method"] != "none"}
    assert baselines(Registry(params)) == {}


def test_proxy_of_a_student_entry(params):
    reg = Registry(params)
    assert reg.students["nokd_c5_full"].architecture == reg.students["c5_edam_t_attn"].architecture
    assert reg.students["nokd"].architecture == ("language_audio", "down")
    params["students"]["c5_edam_t_attn"]["proxy"] = "down"
    with pytest.raises(ParamsError, match=r"c5_edam_t_attn\.proxy.*'full'"):
        Registry(params)


def test_table_marks_the_extra_baselines(params):
    from mmdistill.report.table import table1

    reg = Registry(params)
    runs = pd.DataFrame(
        [
            {"role": r.role, "name": r.name, "seed": r.seed, "acc": 40.0, "f1": 30.0, "f1_macro": 20.0}
            for r in reg.runs()
        ]
    )
    profile = {"architectures": {"a": {"parameters": 1, "latency": {}}}, "rows": {}}
    profile["rows"] = {f"{r.role}s/{r.name}": "a" for r in reg.runs()}
    t = table1(reg, runs, profile)
    nokd = t[t.method == "none"]
    assert list(nokd.name) == ["nokd", "nokd_c1", "nokd_c5_full"]
    assert nokd.paper_acc.iloc[0] == pytest.approx(41.296) and nokd.paper_acc.iloc[1:].isna().all()
    assert "beyond the paper" not in nokd.description.iloc[0]
    assert all("beyond the paper" in d for d in nokd.description.iloc[1:])
    assert "9 transformers" in nokd.description.iloc[1] and "full-length proxies" in nokd.description.iloc[2]


# ---------------------------------------------------------------------- figures
def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_png(path, min_bytes: int = 15_000, min_side: int = 300) -> None:
    import matplotlib.image as mpimg

    assert path.exists(), f"{path} missing"
    assert path.stat().st_size > min_bytes, f"{path}: only {path.stat().st_size} bytes"
    width, height = png_size(path)
    pixels = mpimg.imread(path)  # decodes the whole image
    assert pixels.shape[:2] == (height, width)
    assert min(width, height) >= min_side
    assert pixels[..., :3].std() > 0.01, f"{path} is blank"


@pytest.mark.e2e
def test_pipeline_writes_every_figure(tiny_run):
    out = tiny_run / "results" / "figures"
    written = [f for f in FIGURES if f != "learning_curve"]  # that one needs rows with a train_fraction
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(written)
    for name in written:
        check_png(out / f"{name}.png")
    table = pd.read_csv(tiny_run / "results" / "table1.csv")
    for col in [
        "d_acc",
        "d_acc_ci_low",
        "d_acc_ci_high",
        "p_acc",
        "p_acc_perm",
        "d_f1",
        "d_f1_ci_low",
        "d_f1_ci_high",
        "p_f1",
        "p_f1_perm",
        "n_pairs",
    ]:
        assert col in table, col
    distilled = table[(table.network == "Student") & (table.method != "none")]
    assert distilled.d_acc.notna().all() and (distilled.n_pairs == 2).all()
    assert table[table.network == "Teacher"].d_acc.isna().all()
    assert "Δ acc. vs no KD" in (tiny_run / "results" / "table1.md").read_text()


def _report_inputs(project):
    reg = Registry.from_file(project / "params.yaml")
    return reg, pd.read_csv(reg.table("csv")), collect_runs(reg), read_json(reg.profile())


@pytest.mark.e2e
def test_figures_fast_and_skip_absent_rows(tiny_run, tmp_path, caplog):
    reg, table, runs, profile = _report_inputs(tiny_run)
    t0 = time.perf_counter()
    written = make_figures(reg, table, runs, profile, tmp_path / "all")
    seconds = time.perf_counter() - t0
    assert set(written) == set(FIGURES) - {"learning_curve"}  # no row trains on part of the split
    assert seconds < 30, f"figures took {seconds:.1f} s"

    caplog.set_level(logging.INFO, logger="mmdistill.report.figures")
    out = tmp_path / "some"
    written = make_figures(reg, table, runs, profile, out, FigureRows(teacher="absent"))
    assert "teachers.absent is not in params" in caplog.text
    assert {"attention", "confusion"} <= set(written)  # the students' panels remain
    check_png(out / "attention.png")

    caplog.clear()
    rows = FigureRows(teacher="absent", nokd="absent", attention_student="absent")
    written = make_figures(reg, table, runs, profile, out, rows)
    assert "attention" not in written and not (out / "attention.png").exists()  # the stale one is gone
    assert "students.absent is not in params" in caplog.text
    check_png(out / "confusion.png", min_bytes=5_000)  # the best student alone


@pytest.mark.e2e
def test_snakemake_html_report(tiny_run, tmp_path):
    project = tmp_path / "proj"
    shutil.copytree(tiny_run, project, symlinks=True)
    # the target limits the report to what the tiny run built (the default target has more)
    out = run(["snakemake", "--cores", "1", "--report", "results/report.html", "results/table1.csv"], project)
    html = project / "results" / "report.html"
    assert html.exists(), out
    pngs = sum(p.stat().st_size for p in (project / "results" / "figures").glob("*.png"))
    # self-contained: every figure is embedded (base64 makes it ~4/3 larger)
    assert html.stat().st_size > pngs, (html.stat().st_size, pngs)
    text = html.read_text()
    for needle in ["accuracy.png", "attention.png", "table1.csv", "Knowledge distillation from a multimodal teacher"]:
        assert needle in text, needle


@pytest.mark.e2e
def test_best_student_of_the_cost_line_is_picked_on_validation(tiny_run):
    from mmdistill.report.table import cost_ratios

    reg, table, runs, _ = _report_inputs(tiny_run)
    students = runs[(runs.role == "student") & runs.name.isin(table[table.method != "none"].name)]
    by_valid = students.groupby("name").valid_acc.mean()
    assert cost_ratios(table, reg, runs)["best_student"] == by_valid.idxmax()
    # make another student the best on validation: the choice follows it, whatever the test split says
    other = by_valid.drop(by_valid.idxmax()).index[0]
    runs.loc[(runs.role == "student") & (runs.name == other), "valid_acc"] = 101.0
    assert cost_ratios(table, reg, runs)["best_student"] == other


def test_learning_curve_pairs_each_share_with_its_own_no_kd(params, tmp_path):
    from mmdistill.report import curve
    from mmdistill.report.table import table1

    for f in (0.5, 0.25):
        params["students"][f"nokd_{int(100 * f)}"] = {**params["students"]["nokd"], "train_fraction": f}
        params["students"][f"c5_hinton_{int(100 * f)}"] = {**params["students"]["c5_hinton"], "train_fraction": f}
    reg = Registry(params)
    pairs = baselines(reg)
    assert pairs["c5_hinton_50"] == "nokd_50" and pairs["c5_hinton_25"] == "nokd_25" and pairs["c5_hinton"] == "nokd"
    assert paper_baseline(reg) == "nokd"
    acc = {
        "nokd": 40.0,
        "nokd_50": 35.0,
        "nokd_25": 30.0,
        "c5_hinton": 41.0,
        "c5_hinton_50": 38.0,
        "c5_hinton_25": 35.0,
    }
    runs = pd.DataFrame(
        [
            {
                "role": r.role,
                "name": r.name,
                "seed": r.seed,
                "acc": acc.get(r.name, 40.0) + r.seed,
                "f1": 30.0,
                "f1_macro": 20.0,
            }
            for r in reg.runs()
        ]
    )
    profile = {"architectures": {"a": {"parameters": 1, "latency": {}}}, "rows": {}}
    profile["rows"] = {f"{r.role}s/{r.name}": "a" for r in reg.runs()}
    table = add_paired_stats(table1(reg, runs, profile), reg, runs)
    lc = curve.learning_curve(reg, table, runs)
    got = {(r.name, r.train_fraction): (r.acc_mean, r.d_acc) for r in lc.itertuples()}
    assert got[("c5_hinton_25", 0.25)][0] == pytest.approx(35.5) and got[("c5_hinton_25", 0.25)][1] == pytest.approx(
        5.0
    )
    assert got[("c5_hinton", 1.0)][1] == pytest.approx(1.0)
    assert {n for n, _ in got} == set(acc)  # only the families seen at several shares
    md = curve.to_markdown(lc)
    assert "## Learning curve" in md and "25 % of the training set" in md and "+5.00 (sd 0)" in md
    assert "(25 % of the training set)" in table.set_index("name").description["c5_hinton_25"]
    assert (
        curve.learning_curve(Registry({**params, "subset": {"students": ["nokd", "c5_hinton"]}}), table, runs) is None
    )
    from mmdistill.report.figures import save_figure

    check_png(save_figure(curve.learning_curve_figure(lc, runs), tmp_path / "lc.png"), min_bytes=10_000)
