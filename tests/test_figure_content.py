"""The figures show the study's numbers: each figure the report draws from the session's tiny
Snakemake run (`tiny_run`, tests/conftest.py) is captured before it is written and its plotted
data compared with Table 1, the runs' metrics.json and curves.csv, and profile.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from mmdistill.registry import Registry, Run
from mmdistill.report import figures
from mmdistill.report.table import collect_runs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def drawn(tiny_run, tmp_path_factory):
    """name -> Figure of every figure make_figures writes, with its inputs."""
    reg = Registry.from_file(tiny_run / "params.yaml")
    table = pd.read_csv(reg.table("csv"))
    runs = collect_runs(reg)
    profile = json.loads(reg.profile().read_text())
    captured = {}
    real_save = figures.save_figure

    def capture(fig, path):
        captured[path.stem] = fig
        return real_save(fig, path)

    mp = pytest.MonkeyPatch()
    mp.setattr(figures, "save_figure", capture)
    try:
        figures.make_figures(reg, table, runs, profile, tmp_path_factory.mktemp("figures"))
    finally:
        mp.undo()
    assert set(captured) == set(figures.FIGURES) - {"learning_curve"}  # no tiny row trains on part of the split
    return reg, table, runs, profile, captured


def test_accuracy_figure_shows_table_seeds_and_paper(drawn):
    reg, table, runs, _, figs = drawn
    n = len(table)
    for ax, metric in zip(figs["accuracy"].axes[:2], ("acc", "f1")):
        bars = next(c for c in ax.containers if isinstance(c, BarContainer))  # the data bars, drawn first
        # first table row on top: bar k stands at y = n - 1 - k
        order = np.argsort([-b.get_y() for b in bars])
        np.testing.assert_allclose([bars[i].get_width() for i in order], table[f"{metric}_mean"], atol=1e-6)
        seeds_plotted = {}
        for line in ax.lines:
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            if line.get_marker() == "o" and len(x) and len(set(y)) == 1:
                seeds_plotted[int(round(y[0]))] = sorted(x)
            if line.get_marker() == "D" and len(x):  # (the legend's marker has no data)
                np.testing.assert_allclose(x, table[f"paper_{metric}"], equal_nan=True)
        for k, r in enumerate(table.itertuples()):
            want = runs[(runs.role == r.network.lower()) & (runs.name == r.name)][metric]
            np.testing.assert_allclose(seeds_plotted[n - 1 - k], sorted(want), atol=1e-9)
            # the runs' own numbers, not only the frame: 100 * test metric of each seed's metrics.json
            key = "acc7" if metric == "acc" else "f1_weighted"
            files = [
                100 * json.loads(reg.metrics(Run(r.network.lower(), r.name, s)).read_text())["test"][key]
                for s in reg.seeds
            ]
            np.testing.assert_allclose(seeds_plotted[n - 1 - k], sorted(files), atol=1e-9)


def test_cost_figure_places_each_architecture(drawn):
    _, table, _, profile, figs = drawn
    ax = figs["cost"].axes[0]
    batch = list(next(iter(profile["architectures"].values()))["latency"])[0]
    plotted = set()
    for container in ax.containers:
        x, y = container.lines[0].get_data()
        plotted |= {(int(a), round(float(b), 9)) for a, b in zip(x, y)}
    keys = {profile["rows"][f"{r.network.lower()}s/{r.name}"] for r in table.itertuples()}
    want = {
        (
            profile["architectures"][k]["parameters"],
            round(profile["architectures"][k]["latency"][batch]["median_ms"], 9),
        )
        for k in keys
    }
    assert plotted == want


def test_curve_figures_plot_every_runs_curves(drawn):
    reg, table, _, _, figs = drawn
    for name, columns, scale in (
        ("curves_loss", ("train_ce", "valid_loss"), 1.0),
        ("curves_valid", ("valid_acc7", "valid_f1_weighted"), 100.0),
    ):
        panels = [ax for ax in figs[name].axes if ax.get_visible() and ax.get_title()]
        # one panel per run set, in table order (a teacher heading two groups appears once)
        rows = list(dict.fromkeys((r.network.lower(), r.name) for r in table.itertuples()))
        assert len(panels) == len(rows)
        for ax, (role, row_name) in zip(panels, rows):
            assert ax.get_title() in (row_name, f"teacher {row_name}")
            plotted = sorted(
                tuple(np.round(np.asarray(line.get_ydata(), float), 9)) for line in ax.lines if len(line.get_ydata())
            )  # lines with data: the legend's handles in the first panel have none
            want = []
            for seed in reg.seeds:
                df = pd.read_csv(reg.curves(Run(role, row_name, seed)))
                want += [tuple(np.round(scale * df[c].to_numpy(float), 9)) for c in columns]
            assert plotted == sorted(want), (name, row_name)


def test_confusion_figure_shows_summed_row_normalized_matrices(drawn):
    reg, table, _, _, figs = drawn
    panels = [ax for ax in figs["confusion"].axes if ax.images]
    distilled = table[(table.network == "Student") & (table.method != "none")]
    best = distilled.sort_values("acc_mean", ascending=False).iloc[0]["name"]
    expect = [("student", best), ("student", "nokd"), ("teacher", "complete")]
    assert len(panels) == len(expect)
    for ax, (role, name) in zip(panels, expect):
        assert name in ax.get_title()
        cm = sum(
            np.asarray(json.loads(reg.metrics(Run(role, name, s)).read_text())["test"]["confusion"], float)
            for s in reg.seeds
        )
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        np.testing.assert_allclose(ax.images[0].get_array(), share, atol=1e-12)
        counts = sorted(int(t.get_text()) for t in ax.texts)
        assert counts == sorted(int(c) for c in cm.ravel() if c)


def test_attention_figure_shows_attention_distributions(drawn):
    _, _, _, _, figs = drawn
    maps = [np.asarray(ax.images[0].get_array(), float) for ax in figs["attention"].axes if ax.images]
    assert len(maps) == 3  # teacher, student without KD, student after KD
    for m in maps:
        assert m.ndim == 2 and (m >= 0).all()
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-5)  # each query row is a distribution
    assert not np.allclose(maps[0], maps[1])  # different models, different maps
