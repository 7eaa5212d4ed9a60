"""Figures of the report (PNG, matplotlib's Agg canvas, no pyplot state).

Written by the ``report`` step into :meth:`Registry.figures_dir`, each atomically:

==================  ==========================================================================
``accuracy.png``    accuracy and weighted F1 of every Table 1 row: mean with a +-1 sd bar over
                    seeds, every seed as a dot, the paper's value as a diamond beside ours
``cost.png``        parameters vs inference latency (median, p10-p90 bar) per batch size, one
                    point per architecture (rows sharing an architecture share a point)
``curves_loss.png`` per Table 1 row: training and validation cross-entropy per epoch, seeds
                    overlaid (the training CE is the classification term alone, so it is
                    comparable across rows with and without a distillation term)
``curves_valid.png`` per Table 1 row: validation accuracy and weighted F1 per epoch
``confusion.png``   test confusion matrices (summed over seeds, rows normalized) of the best
                    distilled student, the student without distillation and the teacher
``attention.png``   one attention map (softmax of the scores, mean over heads) of a teacher
                    transformer and of the same-named transformer of the student without and
                    with attention distillation, for one test sample (paper 002, Fig. 3 idea)
``learning_curve``  accuracy against the share of the training split, when students train on
                    parts of it (:mod:`mmdistill.report.curve`)
==================  ==========================================================================

The rows of the last two figures are picked by registry keys (:class:`FigureRows`); a row
that params.yaml does not define drops its panel, with a log message, and a figure left
without panels is not written. Plot functions take data and return a
:class:`matplotlib.figure.Figure`; :func:`make_figures` does the reading and writing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmdistill.data import N_CLASSES
from mmdistill.io import atomic_path, read_json
from mmdistill.modalities import FILE_KEY, MODALITIES, parse_pair
from mmdistill.registry import Registry, Run

log = logging.getLogger(__name__)

FIGURES = ("accuracy", "cost", "curves_loss", "curves_valid", "confusion", "attention", "learning_curve")
DPI = 110
CLASS_LABELS = [str(c - 3) for c in range(N_CLASSES)]  # class index 0..6 = sentiment -3..3
SEED_COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
ROLE_COLORS = {"Teacher": "#8c8c8c", "Student": "#4c72b0", "baseline": "#c44e52"}
TEXT_COLORS = {"Teacher": "#505050", "Student": "#3b5a8c"}


@dataclass(frozen=True)
class FigureRows:
    """Registry keys of the rows shown by the confusion and attention figures.

    teacher:            the complete teacher
    nokd:               the student without distillation
    attention_student:  the student distilled on attention maps whose map is shown
    transformer:        the transformer whose map is shown (teacher and students share names)
    layer:              its layer, 0-based (0 = the paper's layer 1)
    sample:             index of the test sample
    seed:               seed of the runs whose checkpoints are loaded (None: the first seed)
    """

    teacher: str = "complete"
    nokd: str = "nokd"
    attention_student: str = "c5_edam_s_attn"
    transformer: str = "V<-A"
    layer: int = 0
    sample: int = 0
    seed: int | None = None


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def row_label(r) -> str:
    if r.network == "Teacher":
        return f"teacher {r.name}"
    return f"{r.name}: {r.description}"


# ---------------------------------------------------------------------- (a) accuracy and F1
def accuracy_figure(table: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Mean +- sd bars of every Table 1 row (top to bottom in table order), seeds as dots,
    the paper's value as a diamond; a dashed line at the no-KD student's mean; ``*`` after a
    student whose paired difference to it holds (95 % CI excludes 0, needs stats columns)."""
    n = len(table)
    fig = new_figure(13, 1.2 + 0.32 * n)
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(n)[::-1]  # first row on top
    baseline = table[(table.network == "Student") & (table.method == "none")]
    for ax, metric, title in zip(axes, ("acc", "f1"), ("Accuracy (%)", "Weighted F1 (%)")):
        colors = [
            ROLE_COLORS["baseline"] if (r.network == "Student" and r.method == "none") else ROLE_COLORS[r.network]
            for r in table.itertuples()
        ]
        ax.barh(
            y,
            table[f"{metric}_mean"],
            xerr=table[f"{metric}_std"].fillna(0),
            color=colors,
            alpha=0.75,
            height=0.7,
            capsize=3,
            error_kw={"elinewidth": 1},
        )
        for yi, r in zip(y, table.itertuples()):
            seeds = runs[(runs.role == r.network.lower()) & (runs.name == r.name)][metric]
            ax.plot(seeds, np.full(len(seeds), yi), "o", ms=3, color="black", alpha=0.6, zorder=3)
            if f"d_{metric}_ci_low" in table and (
                getattr(r, f"d_{metric}_ci_low") > 0 or getattr(r, f"d_{metric}_ci_high") < 0
            ):
                right = np.nanmax(
                    [getattr(r, f"{metric}_mean") + np.nan_to_num(getattr(r, f"{metric}_std")), seeds.max()]
                )
                ax.annotate(
                    "*",
                    (right, yi),
                    xytext=(5, -5),
                    textcoords="offset points",
                    fontsize=13,
                    fontweight="bold",
                    color=ROLE_COLORS["baseline"],
                )
        ax.plot(table[f"paper_{metric}"], y, "D", ms=6, mfc="none", mec="black", mew=1.3, zorder=4)
        if not baseline.empty:
            ax.axvline(baseline[f"{metric}_mean"].iloc[0], color=ROLE_COLORS["baseline"], ls="--", lw=1)
        ax.set_xlabel(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [row_label(r) for r in table.itertuples()], fontsize=8)
    axes[0].set_ylim(-0.7, n - 0.3)
    handles = [
        axes[0].barh([np.nan], [np.nan], color=ROLE_COLORS["Teacher"], label="teacher (mean ± sd)"),
        axes[0].barh([np.nan], [np.nan], color=ROLE_COLORS["Student"], label="student (mean ± sd)"),
        axes[0].barh([np.nan], [np.nan], color=ROLE_COLORS["baseline"], label="student without KD"),
        axes[0].plot([], [], "o", ms=3, color="black", label="one seed")[0],
        axes[0].plot([], [], "D", mfc="none", mec="black", label="paper (CMU-MOSEI)")[0],
    ]
    if "d_acc_ci_low" in table:
        handles.append(
            axes[0].plot(
                [],
                [],
                ls="",
                marker="$*$",
                ms=8,
                color=ROLE_COLORS["baseline"],
                label="differs from no KD (paired 95% CI excludes 0)",
            )[0]
        )
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


# ---------------------------------------------------------------------- (b) parameters vs latency
def cost_points(table: pd.DataFrame, profile: dict[str, Any]) -> pd.DataFrame:
    """One row per architecture: role, short name, the rows using it, parameters and latency
    stats per batch size."""
    groups: dict[str, dict[str, Any]] = {}
    for r in table.itertuples():
        key = profile["rows"][f"{r.network.lower()}s/{r.name}"]
        g = groups.setdefault(key, {"role": r.network, "names": []})
        if r.name not in g["names"]:
            g["names"].append(r.name)
    rows = []
    for key, g in groups.items():
        arch = profile["architectures"][key]
        bp = arch["blueprint"]
        short = "+".join(bp["branches"]) if g["role"] == "Teacher" else bp["configuration"]
        row = {
            "role": g["role"],
            "short": short,
            "n_rows": len(g["names"]),
            "names": ", ".join(g["names"]),
            "parameters": arch["parameters"],
        }
        for bs, lat in arch["latency"].items():
            row.update({f"b{bs}_median": lat["median_ms"], f"b{bs}_p10": lat["p10_ms"], f"b{bs}_p90": lat["p90_ms"]})
        rows.append(row)
    return pd.DataFrame(rows)


def cost_figure(table: pd.DataFrame, profile: dict[str, Any]) -> Figure:
    """Architectures with the same role and parameter count (e.g. the students of
    configurations 2-5) share one label."""
    pts = cost_points(table, profile)
    batch_sizes = list(next(iter(profile["architectures"].values()))["latency"])
    fig = new_figure(5.8 * len(batch_sizes), 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(batch_sizes)))
    labels = []  # (parameters, role, text): one per role and parameter count
    for (role, n_params), same in pts.groupby(["role", "parameters"]):
        n_rows = int(same.n_rows.sum())
        kind = role.lower() + "s" * (len(same) > 1)
        labels.append((n_params, role, f"{kind} {', '.join(same.short)} ({n_rows} row{'s' * (n_rows > 1)})"))
    labels.sort()
    for ax, bs in zip(axes, batch_sizes):
        for role, marker in (("Teacher", "s"), ("Student", "o")):
            p = pts[pts.role == role]
            med = p[f"b{bs}_median"]
            ax.errorbar(
                p.parameters,
                med,
                yerr=[med - p[f"b{bs}_p10"], p[f"b{bs}_p90"] - med],
                fmt=marker,
                ms=7,
                color=ROLE_COLORS[role],
                capsize=3,
                alpha=0.85,
                label=f"{role.lower()}s",
            )
        stack, prev = 0, None
        for n_params, role, text in labels:  # labels of close parameter counts are stacked downwards
            stack = stack + 1 if prev is not None and n_params < 1.15 * prev else 0
            prev = n_params
            same = pts[(pts.role == role) & (pts.parameters == n_params)]
            ax.annotate(
                text,
                (n_params, same[f"b{bs}_median"].max()),
                xytext=(8, 6 - 13 * stack),
                textcoords="offset points",
                fontsize=7,
                va="bottom",
                color=TEXT_COLORS[role],
            )
        lo = pts[f"b{bs}_p10"].min()
        if pts[f"b{bs}_p90"].max() > 10 * lo > 0:
            ax.set_yscale("log")
        if pts.parameters.max() > 10 * pts.parameters.min():
            ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"latency, batch {bs} (ms; median, bar p10–p90)")
        ax.set_title(f"batch size {bs} ({profile['device']}, {profile['threads']} thread(s))", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.3, y=0.15)
    axes[0].legend(fontsize=8, loc="upper left")
    return fig


# ---------------------------------------------------------------------- (c) training curves
def load_curves(reg: Registry, table: pd.DataFrame) -> dict[str, dict[int, pd.DataFrame]]:
    """Row label -> seed -> curves.csv of that run, in table order."""
    out = {}
    for r in table.itertuples():
        role = r.network.lower()
        out[row_label(r) if role == "teacher" else r.name] = {
            seed: pd.read_csv(reg.curves(Run(role, r.name, seed))) for seed in reg.seeds
        }
    return out


def curves_figure(
    curves: dict[str, dict[int, pd.DataFrame]], series: list[tuple[str, str, str]], ylabel: str, scale: float = 1.0
) -> Figure:
    """A grid with one panel per row, seeds overlaid (colour = seed); ``series`` lists
    (column, line style, legend text); values are multiplied by ``scale``."""
    n = len(curves)
    cols = min(5, n)
    nrows = -(-n // cols)
    width, height = 3.1 * cols, 0.8 + 2.2 * nrows
    fig = new_figure(width, height, layout=None)  # fixed margins: a constrained grid costs ~1 s more
    fig.subplots_adjust(
        left=0.6 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.6 / height, wspace=0.28, hspace=0.38
    )
    axes = np.atleast_1d(fig.subplots(nrows, cols, sharex=True, squeeze=False)).ravel()
    seeds = sorted({s for runs in curves.values() for s in runs})
    for ax, (title, runs) in zip(axes, curves.items()):
        for seed, df in runs.items():
            color = SEED_COLORS[seeds.index(seed) % len(SEED_COLORS)]
            for col, style, _ in series:
                if col in df:
                    ax.plot(df.epoch, scale * df[col], style, color=color, lw=1.2, ms=3)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[(nrows - 1) * cols :]:
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[::cols]:
        ax.set_ylabel(ylabel, fontsize=8)
    handles = [axes[0].plot([], [], style, color="black", label=text)[0] for _, style, text in series]
    handles += [
        axes[0].plot([], [], "-", color=SEED_COLORS[i % len(SEED_COLORS)], label=f"seed {s}")[0]
        for i, s in enumerate(seeds)
    ]
    fig.legend(handles=handles, loc="upper center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


LOSS_SERIES = [("train_ce", "-", "training cross-entropy"), ("valid_loss", "--", "validation cross-entropy")]
VALID_SERIES = [("valid_acc7", "-", "validation accuracy"), ("valid_f1_weighted", "--", "validation weighted F1")]


# ---------------------------------------------------------------------- (d) confusion matrices
def confusion_figure(matrices: list[tuple[str, np.ndarray]]) -> Figure:
    """Row-normalized colours (share of each true class), counts written in the cells."""
    fig = new_figure(4.3 * len(matrices) + 1.0, 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    im = None
    for ax, (title, cm) in zip(axes, matrices):
        cm = np.asarray(cm, dtype=float)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i, j in np.ndindex(cm.shape):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(N_CLASSES), CLASS_LABELS, fontsize=8)
        ax.set_yticks(range(N_CLASSES), CLASS_LABELS, fontsize=8)
        ax.set_xlabel("predicted sentiment class", fontsize=8)
        ax.set_ylabel("true sentiment class", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="share of the true class")
    return fig


def confusion_rows(table: pd.DataFrame, rows: FigureRows) -> list[tuple[str, str, str]]:
    """(role, name, title) of the panels: best distilled student (by mean accuracy), the
    no-KD student, the teacher; titles give the mean test accuracy."""
    out = []
    distilled = table[(table.network == "Student") & (table.method != "none")]
    if distilled.empty:
        log.info("confusion figure: no distilled student in the table; panel skipped")
    else:
        best = distilled.sort_values("acc_mean", ascending=False).iloc[0]
        out.append(("student", best["name"], f"best student {best['name']}\n{_acc_text(best)}"))
    for role, name, what in (("student", rows.nokd, "without KD"), ("teacher", rows.teacher, "teacher")):
        sel = table[(table.network == role.capitalize()) & (table.name == name)]
        if sel.empty:
            log.info("confusion figure: %ss.%s is not in params; panel skipped", role, name)
            continue
        out.append((role, name, f"{what} {name}\n{_acc_text(sel.iloc[0])}"))
    return out


def _acc_text(row) -> str:
    return f"test, {int(row['n_seeds'])} seed(s) summed; mean acc. {row['acc_mean']:.1f} %"


def load_confusion(reg: Registry, role: str, name: str) -> np.ndarray:
    """Test confusion matrix summed over seeds."""
    return sum(np.asarray(read_json(reg.metrics(Run(role, name, s)))["test"]["confusion"]) for s in reg.seeds)


# ---------------------------------------------------------------------- (e) attention maps
@dataclass(frozen=True)
class AttentionPanel:
    title: str
    weights: np.ndarray  # (Tq, Tk), rows sum to 1
    role: str  # 'teacher' | 'student'


def attention_figure(
    panels: list[AttentionPanel], transformer: str, layer: int, title: str, student_modality: str = "V"
) -> Figure:
    """Maps (query steps x key steps) on one colour scale. A student's streams other than its
    input modality are proxies made from it, which the axis labels say."""
    kv, query = parse_pair(transformer)
    fig = new_figure(3.9 * len(panels) + 0.8, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    vmax = max(float(p.weights.max()) for p in panels)
    im = None

    def stream(m: str, role: str) -> str:
        return f"{m} proxy from {student_modality}" if role == "student" and m != student_modality else f"{m} stream"

    for ax, p in zip(axes, panels):
        im = ax.imshow(p.weights, cmap="viridis", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_title(p.title, fontsize=8)
        ax.set_xlabel(f"key step ({stream(kv, p.role)})", fontsize=8)
        ax.set_ylabel(f"query step ({stream(query, p.role)})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="attention weight")
    fig.suptitle(f"'{transformer}' layer {layer + 1}: {title}", fontsize=10)
    return fig


def row_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """Mean over query rows of KL(p_row || q_row)."""
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=-1)))


def read_test_sample(path: str | Path, index: int) -> tuple[dict[str, torch.Tensor], int]:  # noqa: F821
    """One test sample of a prepared HDF5 file (read by slicing, not the whole split) and its class."""
    import torch

    with h5py.File(path, "r") as f:
        g = f["test"]
        n = g["label7"].shape[0]
        if not 0 <= index < n:
            raise IndexError(f"{path}: test sample {index} requested, the test split has {n}")
        inputs = {
            m: torch.from_numpy(np.asarray(g[FILE_KEY[m]][index : index + 1], dtype=np.float32)) for m in MODALITIES
        }  # (1, T, D)
        return inputs, int(g["label7"][index])


def attention_maps(reg: Registry, rows: FigureRows) -> tuple[list[AttentionPanel], str]:
    """The panels of the attention figure and a title naming the sample."""
    import torch

    from mmdistill.experiment import load_model
    from mmdistill.models.outputs import Request

    seed = reg.seeds[0] if rows.seed is None else rows.seed
    wanted = [
        ("teacher", rows.teacher, "teacher"),
        ("student", rows.nokd, "student without KD"),
        ("student", rows.attention_student, "student after KD"),
    ]
    inputs, label = read_test_sample(reg.prepared(), rows.sample)
    request = Request(attention=frozenset({rows.transformer}))
    maps: list[AttentionPanel] = []
    reference = None
    for role, name, what in wanted:
        table = reg.teachers if role == "teacher" else reg.students
        if name not in table:
            log.info("attention figure: %ss.%s is not in params; panel skipped", role, name)
            continue
        model = load_model(reg.checkpoint(Run(role, name, seed)))
        with torch.no_grad():
            out = model(inputs, request)
        if rows.transformer not in out.attention or rows.layer >= len(out.attention[rows.transformer]):
            log.info(
                "attention figure: %ss.%s has no transformer '%s' layer %d; panel skipped",
                role,
                name,
                rows.transformer,
                rows.layer + 1,
            )
            continue
        scores = out.attention[rows.transformer][rows.layer]  # (1, H, Tq, Tk)
        m = scores.softmax(-1).mean(1)[0].cpu().numpy()  # (Tq, Tk)
        text = f"{what}\n{role} {name}, seed {seed}"
        if role == "teacher":
            reference = m
        elif reference is not None and reference.shape == m.shape:
            text += f"\nKL(teacher‖student) per row {row_kl(reference, m):.3f}"
        maps.append(AttentionPanel(text, m, role))
    return maps, f"test sample {rows.sample} (class {label - 3:+d})"


# ---------------------------------------------------------------------- all figures
def make_figures(
    reg: Registry,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    profile: dict[str, Any],
    out_dir: str | Path,
    rows: FigureRows = FigureRows(),
) -> dict[str, Path]:
    """Write every figure into ``out_dir``; return name -> path of those written.

    ``table`` is Table 1 (with or without the paired-difference columns), ``runs`` the
    per-run frame of :func:`mmdistill.report.table.collect_runs`.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}

    def put(name: str, fig: Figure | None) -> None:
        if fig is not None:
            written[name] = save_figure(fig, out_dir / f"{name}.png")

    put("accuracy", accuracy_figure(table, runs))
    put("cost", cost_figure(table, profile))
    curves = load_curves(reg, table)
    put("curves_loss", curves_figure(curves, LOSS_SERIES, "cross-entropy"))
    put("curves_valid", curves_figure(curves, VALID_SERIES, "validation score (%)", scale=100.0))
    panels = confusion_rows(table, rows)
    put("confusion", confusion_figure([(t, load_confusion(reg, r, n)) for r, n, t in panels]) if panels else None)
    maps, title = attention_maps(reg, rows)
    put(
        "attention",
        attention_figure(maps, rows.transformer, rows.layer, title, reg.params["student_modality"]) if maps else None,
    )
    from mmdistill.report.curve import learning_curve, learning_curve_figure

    curve = learning_curve(reg, table, runs) if "d_acc" in table else None
    put("learning_curve", learning_curve_figure(curve, runs) if curve is not None else None)
    for name in FIGURES:  # a figure skipped this time must not survive from an earlier run
        stale = out_dir / f"{name}.png"
        if name not in written and stale.exists():
            log.info("removing %s (not produced by this report)", stale)
            stale.unlink()
    for name in FIGURES:
        if name not in written:
            log.info("figure %s skipped (see messages above)", name)
    return written
