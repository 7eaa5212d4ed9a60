"""Missing-modality robustness: the teachers without some of their inputs, beside the students.

The motivation of paper 002 is a deployment where only video is available. A multimodal
teacher can still be run there by feeding it something in place of the missing streams;
this report measures how much it loses, and sets it beside the unimodal students, which
never read the other modalities and so lose nothing.

Conditions. With ``s`` the students' input modality and ``a``, ``b`` the two others (A and L
for video students): nothing missing, ``a`` missing, ``b`` missing, both missing. A missing
modality is replaced (:func:`mmdistill.data.dataset.mask_inputs`)

* by zeros (``fill='zero'``), which is also what padding looks like, or
* by its per-feature mean over the *real* (non-padded) time steps of the training split
  (``fill='mean'``, :func:`feature_means`), a neutral input that is not mistaken for padding.

Every teacher is evaluated under every condition on the test split, once per seed. The
students shown are every student without distillation and the best distilled student,
picked by mean *validation* accuracy over seeds (picking on test would flatter it); their
test numbers come from their metrics files and are the same under every condition.
Accuracy and weighted F1 in percent, mean and sample standard deviation (ddof 1) over seeds.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmdistill.data.dataset import DataError, SplitData, mask_inputs
from mmdistill.io import read_json
from mmdistill.modalities import MODALITIES
from mmdistill.models.outputs import NOTHING
from mmdistill.registry import Registry, Run
from mmdistill.train.metrics import classification_metrics

log = logging.getLogger(__name__)

FILLS = ("zero", "mean")
ALL_PRESENT = "none"  # the ``missing`` value of the complete-input condition


def feature_means(split: SplitData, chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Per-feature mean of every modality over its real time steps: m -> (D,) float32.

    Sequences are left-padded, so the real steps of sample i are its last ``length[i, m]``;
    computed in chunks of samples (no copy of a whole modality).
    """
    means = {}
    for j, m in enumerate(MODALITIES):
        x = split.inputs[m]  # (N, T, D)
        T = x.shape[1]
        total = torch.zeros(x.shape[2], dtype=torch.float64)
        count = 0
        for start in range(0, len(split), chunk):
            xs = x[start : start + chunk]
            lengths = split.length[start : start + chunk, j].to(torch.long).clamp(max=T)  # (n,)
            real = torch.arange(T) >= (T - lengths)[:, None]  # (n, T)
            total += (xs.double() * real[..., None]).sum(dim=(0, 1))
            count += int(real.sum())
        if count == 0:
            raise DataError(
                f"split '{split.name}': modality {m} has no real (non-padded) time step, so its mean is undefined"
            )
        means[m] = (total / count).float()
    return means


def missing_conditions(student_modality: str) -> list[tuple[str, ...]]:
    """The modality sets that go missing: each modality other than the student's, then both."""
    if student_modality not in MODALITIES:
        raise ValueError(f"student modality must be one of {MODALITIES}, got {student_modality!r}")
    a, b = (m for m in MODALITIES if m != student_modality)
    return [(a,), (b,), (a, b)]


def condition_name(missing: tuple[str, ...]) -> str:
    return "+".join(missing) if missing else ALL_PRESENT


def conditions(student_modality: str) -> list[tuple[tuple[str, ...], str]]:
    """Every (missing modalities, fill) evaluated: all present once (nothing is replaced, so the
    fill does not matter), then each missing set with each fill."""
    return [((), "zero")] + [(m, f) for m in missing_conditions(student_modality) for f in FILLS]


def _row(network: str, name: str, seed: int, missing: tuple[str, ...], fill: str, m: dict) -> dict[str, Any]:
    return {
        "network": network,
        "name": name,
        "seed": seed,
        "missing": condition_name(missing),
        "fill": fill,
        "acc": 100 * m["acc7"],
        "f1": 100 * m["f1_weighted"],
    }


@torch.no_grad()
def evaluate_missing(
    model: nn.Module,
    split: SplitData,
    missing: tuple[str, ...],
    fill: str,
    means: dict[str, torch.Tensor] | None,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Test metrics of ``model`` with the modalities ``missing`` replaced by ``fill``."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; expected one of {FILLS}")
    keep = tuple(m for m in MODALITIES if m not in missing)
    model.eval()
    dev_means = None if means is None else {m: v.to(device) for m, v in means.items()}
    preds = []
    for b in split.batches(batch_size):
        inputs = mask_inputs(b.to(device).inputs, keep, fill, dev_means)
        preds.append(model(inputs, NOTHING).logits.argmax(-1).cpu())
    return classification_metrics(split.label.numpy(), torch.cat(preds).numpy())


def teacher_rows(
    name: str,
    seed: int,
    model: nn.Module,
    test: SplitData,
    means: dict[str, torch.Tensor],
    student_modality: str,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """One row per condition (and fill) for one teacher run."""
    return [
        _row(
            "Teacher",
            name,
            seed,
            missing,
            fill,
            evaluate_missing(model, test, missing, fill, means, batch_size, device),
        )
        for missing, fill in conditions(student_modality)
    ]


def pick_students(reg: Registry) -> list[str]:
    """Every student without distillation, then the distilled student of best mean validation accuracy."""
    plain = [n for n, s in reg.students.items() if not s.distils]
    best, best_acc = None, -math.inf
    for name, s in reg.students.items():
        if not s.distils:
            continue
        acc = float(
            np.mean([read_json(reg.metrics(Run("student", name, seed)))["valid"]["acc7"] for seed in reg.seeds])
        )
        if acc > best_acc:
            best, best_acc = name, acc
    return plain + ([best] if best else [])


def student_rows(reg: Registry, names: list[str]) -> list[dict[str, Any]]:
    """The students' test numbers (from their metrics files), repeated under every condition."""
    conds = conditions(reg.params["student_modality"])
    rows = []
    for name in names:
        for seed in reg.seeds:
            t = read_json(reg.metrics(Run("student", name, seed)))["test"]
            rows += [_row("Student", name, seed, missing, fill, t) for missing, fill in conds]
    return rows


def robustness_runs(reg: Registry, progress: bool = True) -> pd.DataFrame:
    """Per-seed rows of every teacher under every condition and of the picked students."""
    from mmdistill.experiment import load_data, load_model
    from mmdistill.train.loop import resolve_device

    device = resolve_device(reg.params["train"]["device"])
    batch_size = int(reg.params["train"]["batch_size"])
    splits = load_data(reg)
    means = feature_means(splits["train"])
    rows = []
    for run in reg.runs("teacher"):
        model = load_model(reg.checkpoint(run), device)
        rows += teacher_rows(
            run.name, run.seed, model, splits["test"], means, reg.params["student_modality"], batch_size, device
        )
        if progress:
            log.info("robustness: evaluated %s", run.id)
    rows += student_rows(reg, pick_students(reg))
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame, reg: Registry) -> pd.DataFrame:
    """Mean and std over seeds per (network, name, missing, fill), with a description per model."""

    def sd(v: pd.Series) -> float:
        return float(v.std(ddof=1)) if len(v) > 1 else math.nan

    keys = ["network", "name", "missing", "fill"]
    g = runs.groupby(keys, sort=False)
    out = g.agg(
        n_seeds=("seed", "nunique"),
        acc_mean=("acc", "mean"),
        acc_std=("acc", sd),
        f1_mean=("f1", "mean"),
        f1_std=("f1", sd),
    ).reset_index()
    out.insert(2, "description", [describe(reg, r.network, r.name) for r in out.itertuples()])
    return out


def describe(reg: Registry, network: str, name: str) -> str:
    if network == "Teacher":
        return f"Teacher '{name}' (branches {'+'.join(reg.teachers[name].branches)})"
    s = reg.students[name]
    x = reg.params["student_modality"]
    kind = "without KD" if not s.distils else f"best distilled ({s.method}, {s.level})"
    return f"Student '{name}', {kind}; reads {x} only"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def to_markdown(summary: pd.DataFrame, student_modality: str, source: str) -> str:
    """Two wide tables (accuracy, weighted F1): one row per model, one column per condition."""
    conds = [(ALL_PRESENT, "zero")] + [
        (condition_name(m), f) for m in missing_conditions(student_modality) for f in FILLS
    ]
    header = ["all present"] + [f"{m} missing ({'zeros' if f == 'zero' else 'train mean'})" for m, f in conds[1:]]
    lines = [
        f"# Missing-modality robustness — data: `{source}`",
        "",
        f"Test split; teachers see every modality except the missing ones, replaced by zeros or by the "
        f"training-split mean of each feature over real (non-padded) time steps. Students read "
        f"{student_modality} only, so their numbers do not depend on the other modalities. The best "
        f"distilled student is picked on validation accuracy. Mean ± std over seeds.",
    ]
    models = summary[["network", "name", "description"]].drop_duplicates()
    for metric, title in (("acc", "Accuracy (%)"), ("f1", "Weighted F1 (%)")):
        lines += ["", f"## {title}", "", "| Network | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for mdl in models.itertuples():
            sel = summary[(summary.network == mdl.network) & (summary.name == mdl.name)]
            cells = []
            for missing, fill in conds:
                r = sel[(sel.missing == missing) & (sel.fill == fill)]
                cells.append(
                    "–" if r.empty else _pm(float(r[f"{metric}_mean"].iloc[0]), float(r[f"{metric}_std"].iloc[0]))
                )
            lines.append(f"| {mdl.description} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
