"""Table 1: every teacher and student row, mean +- std over seeds, beside the paper's value.

Rows follow the paper's order: the student without distillation first, then one group per
student-teacher configuration (section 4.2) with its teacher row followed by its student
rows. Accuracy and F1 are in percent; F1 is the weighted F1 (the paper's "F1-score"),
the macro F1 is given beside it. Standard deviations are sample standard deviations
(ddof = 1) over seeds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from mmdistill.io import read_json
from mmdistill.models.configurations import CONFIGURATIONS
from mmdistill.registry import Registry
from mmdistill.report.paper import GROUP_TITLES, LEVEL_TEXT, PAPER_TEACHERS, method_text, paper_student
from mmdistill.report.stats import PAIRED_NOTE, PAPER_ARCHITECTURE, format_difference, paper_baseline

CONFIG_ORDER = ("complete", "video", "language", "audio", "language_audio")


def collect_runs(reg: Registry) -> pd.DataFrame:
    """One row per finished run with its test metrics."""
    rows = []
    for run in reg.runs():
        path = reg.metrics(run)
        if not path.exists():
            raise FileNotFoundError(f"{run.id}: metrics missing at {path}; train the run first")
        m = read_json(path)
        t = m["test"]
        rows.append(
            {
                "role": run.role,
                "name": run.name,
                "seed": run.seed,
                "acc": 100 * t["acc7"],
                "f1": 100 * t["f1_weighted"],
                "f1_macro": 100 * t["f1_macro"],
                "valid_acc": 100 * m["valid"]["acc7"],
                "mae": t["mae"],
                "pearson": t["pearson"],
                "parameters": m["parameters"],
                "epochs_run": m["epochs_run"],
                "best_epoch": m["best_epoch"],
                "train_seconds": m["train_seconds"],
            }
        )
    return pd.DataFrame(rows)


def _stats(values: pd.Series) -> tuple[float, float]:
    v = values.to_numpy(dtype=float)
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else math.nan)


def table1(reg: Registry, runs: pd.DataFrame, profile: dict[str, Any]) -> pd.DataFrame:
    def row(
        role: str, name: str, group: str, description: str, paper: tuple[float, float] | None, extra: dict[str, Any]
    ) -> dict[str, Any]:
        sel = runs[(runs.role == role) & (runs.name == name)]
        acc, acc_sd = _stats(sel.acc)
        f1, f1_sd = _stats(sel.f1)
        f1m, _ = _stats(sel.f1_macro)
        arch = profile["architectures"][profile["rows"][f"{role}s/{name}"]]
        lat = arch["latency"]
        out = {
            "group": group,
            "network": role.capitalize(),
            "name": name,
            "description": description,
            **extra,
            "n_seeds": len(sel),
            "acc_mean": acc,
            "acc_std": acc_sd,
            "f1_mean": f1,
            "f1_std": f1_sd,
            "f1_macro_mean": f1m,
            "paper_acc": paper[0] if paper else math.nan,
            "paper_f1": paper[1] if paper else math.nan,
            "parameters": arch["parameters"],
        }
        for bs, v in lat.items():
            out[f"latency_b{bs}_ms"] = v["median_ms"]
        return out

    out = []
    paper_nokd = paper_baseline(reg)
    nokd = sorted((s for s in reg.students.values() if not s.distils), key=lambda s: s.name != paper_nokd)
    for s in nokd:  # the paper's no-KD row first, then one per other architecture (beyond the paper)
        out.append(
            row(
                "student",
                s.name,
                "",
                nokd_description(s, s.name == paper_nokd),
                paper_student(s.configuration, s.method, dict(s.options), s.level) if s.name == paper_nokd else None,
                _student_extra(s),
            )
        )
    for conf in CONFIG_ORDER:
        members = [s for s in reg.students.values() if s.distils and s.configuration == conf]
        if not members:
            continue
        group = GROUP_TITLES[conf]
        for tname in dict.fromkeys(s.teacher for s in members):
            t = reg.teachers[tname]
            out.append(
                row(
                    "teacher",
                    tname,
                    group,
                    f"Teacher '{tname}' (branches {'+'.join(t.branches)})",
                    PAPER_TEACHERS.get(tuple(t.branches)),
                    {"configuration": "", "teacher": "", "method": "", "level": ""},
                )
            )
            for s in (m for m in members if m.teacher == tname):
                desc = student_description(s)
                out.append(
                    row(
                        "student",
                        s.name,
                        group,
                        desc,
                        paper_student(s.configuration, s.method, dict(s.options), s.level),
                        _student_extra(s),
                    )
                )
    used = {r["name"] for r in out if r["network"] == "Teacher"}
    for tname, t in reg.teachers.items():  # teachers no student distils from
        if tname not in used:
            out.append(
                row(
                    "teacher",
                    tname,
                    "Teachers without a student",
                    f"Teacher '{tname}' (branches {'+'.join(t.branches)})",
                    PAPER_TEACHERS.get(tuple(t.branches)),
                    {"configuration": "", "teacher": "", "method": "", "level": ""},
                )
            )
    return pd.DataFrame(out)


# Methods beyond paper 002's Table 1 (no paper value): how their rows are described.
MSD_WEIGHTS = {"population": "population", "instance": "instance-wise", "meta": "meta-learned", "uniform": "uniform"}
EXTENSIONS = {
    "msd": lambda o: (
        f"MSD ({MSD_WEIGHTS.get(o.get('weighting', 'population'), o.get('weighting'))} "
        f"modality weights; beyond the paper)"
    ),
    "distillvlm": lambda o: "DistillVLM (attention MSE, token InfoNCE, logit KD; beyond the paper)",
}


def nokd_description(s, paper_row: bool) -> str:
    """'Without KD (<configuration> student)'; a no-KD row of another architecture than the
    paper's single one says which and that it is beyond the paper."""
    n = CONFIGURATIONS[s.configuration].n_transformers
    proxies = ", full-length proxies" if s.proxy == "full" else ""
    if paper_row:
        return f"Without KD ({s.configuration} student)"
    if s.train_fraction < 1 and s.architecture == PAPER_ARCHITECTURE:
        return f"Without KD ({s.configuration} student{_fraction_text(s)})"
    return (
        f"Without KD ({s.configuration} student, {n} transformers{proxies}{_fraction_text(s)}; "
        "baseline of its architecture, beyond the paper)"
    )


def student_description(s) -> str:
    """'<method> on <level>', e.g. 'CRD on attention maps'."""
    options = dict(s.options)
    method = EXTENSIONS[s.method](options) if s.method in EXTENSIONS else method_text(s.method, options)
    return f"{method} on {LEVEL_TEXT[s.level]}{_fraction_text(s)}"


def _fraction_text(s) -> str:
    return f" ({100 * s.train_fraction:g} % of the training set)" if s.train_fraction < 1 else ""


def _student_extra(s) -> dict[str, Any]:
    return {
        "configuration": s.configuration,
        "teacher": s.teacher or "",
        "method": s.method,
        "level": s.level or "",
        "train_fraction": s.train_fraction,
    }


def cost_ratios(table: pd.DataFrame, reg: Registry, runs: pd.DataFrame) -> dict[str, Any] | None:
    """Parameters and batch-1 latency of the best distilled student against the complete teacher.

    Best: the highest mean *validation* accuracy over seeds (as the robustness report picks
    it), so that the test split plays no part in the choice.
    """
    complete = [n for n, t in reg.teachers.items() if set(t.branches) == {"V", "A", "L"}]
    students = table[(table.network == "Student") & (table.method != "none")]
    if students.empty:
        students = table[table.network == "Student"]
    teachers = table[(table.network == "Teacher") & table.name.isin(complete)]
    if students.empty or teachers.empty or "latency_b1_ms" not in table:
        return None
    valid = runs[runs.role == "student"].groupby("name").valid_acc.mean()
    best = students.assign(valid_acc=students.name.map(valid)).sort_values("valid_acc", ascending=False).iloc[0]
    teacher = teachers.iloc[0]
    return {
        "best_student": best["name"],
        "teacher": teacher["name"],
        "student_parameters": int(best.parameters),
        "teacher_parameters": int(teacher.parameters),
        "parameter_ratio": float(teacher.parameters / best.parameters),
        "student_latency_ms": float(best.latency_b1_ms),
        "teacher_latency_ms": float(teacher.latency_b1_ms),
        "latency_reduction": float(1 - best.latency_b1_ms / teacher.latency_b1_ms),
    }


def _baseline_cell(r) -> str:
    base = getattr(r, "baseline", "")
    return f"`{base}`" if isinstance(base, str) and base else "–"


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def _num(x: float, fmt: str = "{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def split_note(data_summary: dict[str, Any]) -> str | None:
    """What the heading says when the data were not split by the standard folds (from prepare's summary)."""
    folds = data_summary.get("raw", {}).get("folds")
    if isinstance(folds, dict) and not folds.get("standard", True):
        return folds.get("description", "not the standard split")
    return None


def to_markdown(
    table: pd.DataFrame,
    ratios: dict[str, Any] | None,
    profile: dict[str, Any],
    source: str,
    label_rule: str = "round",
    *,
    split: str | None = None,
) -> str:
    """``split``: a note (:func:`split_note`) that the split is not the standard one, shown in the heading."""
    from mmdistill.data.catalogue import LABEL_RULE_SHORT

    paired = "d_acc" in table  # columns of mmdistill.report.stats.add_paired_stats
    lines = [
        f"# Table 1 — data: `{source}`; 7 classes: {LABEL_RULE_SHORT[label_rule]} (label rule `{label_rule}`)"
        + (" — NOT the standard split" if split else ""),
        "",
        *([f"**Split: {split}. The paper's values below are on the standard split.**", ""] if split else []),
        "Accuracy and weighted F1 on the test split in percent, mean ± std over seeds; "
        "the paper's values (CMU-MOSEI unaligned) beside ours. Latency: median inference time per "
        f"forward pass on {profile['device']} with {profile['threads']} thread(s).",
        "",
        "| Network | Description | Seeds | Accuracy (%) | Paper acc. | F1 (%) | Paper F1 | Parameters "
        "| Latency b1 (ms) |" + (" Δ acc. vs no KD | Δ F1 vs no KD | no-KD row compared |" if paired else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if paired else ""),
    ]
    group = None
    for r in table.itertuples():
        if r.group != group and r.group:
            lines.append(f"| **{r.group}** | | | | | | | | |" + (" | | |" if paired else ""))
        group = r.group
        lines.append(
            f"| {r.network} | {r.description} | {r.n_seeds} | {_pm(r.acc_mean, r.acc_std)} | {_num(r.paper_acc)} "
            f"| {_pm(r.f1_mean, r.f1_std)} | {_num(r.paper_f1)} | {r.parameters:,} "
            f"| {_num(getattr(r, 'latency_b1_ms', math.nan), '{:.2f}')} |"
            + (
                f" {format_difference(r, 'acc')} | {format_difference(r, 'f1')} | {_baseline_cell(r)} |"
                if paired
                else ""
            )
        )
    if paired:
        lines += ["", PAIRED_NOTE]
    if ratios:
        lines += [
            "",
            f"Best distilled student (mean validation accuracy) `{ratios['best_student']}`: "
            f"{ratios['student_parameters']:,} parameters vs "
            f"{ratios['teacher_parameters']:,} for the complete teacher `{ratios['teacher']}` "
            f"({ratios['parameter_ratio']:.2f}x fewer; paper: 2.5x), batch-1 latency "
            f"{ratios['student_latency_ms']:.2f} ms vs {ratios['teacher_latency_ms']:.2f} ms "
            f"({100 * ratios['latency_reduction']:.0f}% less; paper: 22% less).",
        ]
    return "\n".join(lines) + "\n"
