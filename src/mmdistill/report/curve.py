"""Learning curve: students trained on shrinking shares of the training split.

A student entry with ``train_fraction < 1`` trains on the first part of one fixed permutation
of the training split (the teacher keeps the whole split). Rows that differ only in their
fraction form one *family* (same configuration, proxies, teacher, method, level, weights and
options); the curve gives, per family and fraction, the test accuracy (mean ± sd over seeds)
and the paired difference to the no-KD student of the same architecture and fraction (the
``d_acc`` columns of :func:`mmdistill.report.stats.add_paired_stats`). Written only when the
study has such rows: a section of ``table1.md`` and ``figures/learning_curve.png``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmdistill.registry import Registry
from mmdistill.report.stats import format_difference


def family(s) -> str:
    """What a row is apart from its training fraction."""
    return json.dumps(
        [s.configuration, s.proxy, s.teacher, s.method, s.level, s.alpha, s.beta, dict(s.options)], sort_keys=True
    )


def learning_curve(reg: Registry, table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame | None:
    """One row per (family, fraction) of the families seen at more than one fraction; None when
    no student trains on part of the split."""
    students = list(reg.students.values())
    if all(s.train_fraction == 1 for s in students):
        return None
    fams: dict[str, list] = {}
    for s in students:
        fams.setdefault(family(s), []).append(s)
    keyed = table.set_index("name")
    rows = []
    for members in fams.values():
        if len({s.train_fraction for s in members}) < 2:
            continue
        full = min(members, key=lambda s: -s.train_fraction)
        for s in sorted(members, key=lambda s: -s.train_fraction):
            sel = runs[(runs.role == "student") & (runs.name == s.name)]
            r = keyed.loc[s.name]
            rows.append(
                {
                    "family": str(r.description).split(" (")[0] if s.distils else "Without KD",
                    "row_at_full": full.name,
                    "name": s.name,
                    "method": s.method,
                    "level": s.level or "",
                    "train_fraction": s.train_fraction,
                    "n_seeds": len(sel),
                    "acc_mean": float(sel.acc.mean()),
                    "acc_std": float(sel.acc.std(ddof=1)) if len(sel) > 1 else math.nan,
                    **{c: r[c] for c in table.columns if c.startswith(("d_acc", "n_pairs", "baseline"))},
                }
            )
    return pd.DataFrame(rows) if rows else None


def to_markdown(curve: pd.DataFrame) -> str:
    fractions = sorted(curve.train_fraction.unique(), reverse=True)
    head = " | ".join(f"{100 * f:g} % of the training set" for f in fractions)
    lines = [
        "",
        "## Learning curve",
        "",
        "Test accuracy (%) per share of the training split the students train on (the teacher keeps "
        "all of it), mean ± sd over seeds; in brackets the paired difference to the no-KD student of "
        "the same architecture and share, with its 95 % CI (✓: excludes 0).",
        "",
        f"| Row | {head} |",
        "|---|" + "---|" * len(fractions),
    ]
    for _, fam in curve.groupby("row_at_full", sort=False):
        cells = []
        for f in fractions:
            r = fam[fam.train_fraction == f]
            if r.empty:
                cells.append("–")
                continue
            r = r.iloc[0]
            cell = f"{r.acc_mean:.2f} ± {r.acc_std:.2f}"
            if r.method != "none" and "d_acc" in r:
                cell += f" ({format_difference(r, 'acc')})"
            cells.append(cell)
        lines.append(f"| {fam.family.iloc[0]} (`{fam.row_at_full.iloc[0]}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def learning_curve_figure(curve: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Accuracy against the training share, one line per family (mean, ±1 sd bar, seeds as dots)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for i, (_, fam) in enumerate(curve.groupby("row_at_full", sort=False)):
        fam = fam.sort_values("train_fraction")
        x = 100 * fam.train_fraction.to_numpy()
        color = "#c44e52" if fam.method.iloc[0] == "none" else f"C{i}"
        ax.errorbar(x, fam.acc_mean, yerr=fam.acc_std, marker="o", capsize=3, color=color, label=fam.family.iloc[0])
        for xf, name in zip(x, fam.name):
            acc = runs[(runs.role == "student") & (runs.name == name)].acc.to_numpy()
            ax.plot(np.full(len(acc), xf) + (i - 1) * 0.6, acc, ".", color=color, alpha=0.4, ms=4)
    ax.set_xlabel("training set used by the student (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted(100 * curve.train_fraction.unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Learning curve: students on shrinking training sets", fontsize=10)
    fig.tight_layout()
    return fig
