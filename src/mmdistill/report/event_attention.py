"""Where do the models look? Attention on the planted events of the ``known_answer`` data.

The ``known_answer`` scenario (:func:`mmdistill.data.synthetic.generate_known_answer`) knows,
per sample, the video steps that carry the label (its events). For the distilled pairs
(``V<-A``, ``V<-L``: keys and values from video) this measures, on the test split, the share
of each attention row's mass that falls on the video's event steps (within ``radius`` steps of
an event centre), averaged over heads, rows, layers and samples -- for the teacher and for
each student, per seed -- beside the share a uniform row would put there (chance). It also
gives the teacher's share on its *event rows* only (queries at an event of audio or
language), where a teacher that "knows where to look" should concentrate most.

Used by ``python -m mmdistill event-attention`` (docs/known-answer.md); not part of the
pipelines.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmdistill.data.dataset import load_split
from mmdistill.data.synthetic import generate_known_answer
from mmdistill.modalities import parse_pair
from mmdistill.models.outputs import Request
from mmdistill.registry import Registry, Run

log = logging.getLogger(__name__)


def event_masks(reg: Registry, split: str = "test") -> dict[str, np.ndarray]:
    """Modality -> (N, T) 0/1 mask of the steps within 1 step of an event centre, regenerated
    from the data parameters (the generator is deterministic for its seed)."""
    d = reg.params["data"]
    syn = d["synthetic"]
    if syn.get("scenario") != "known_answer":
        raise ValueError(
            "event-attention needs data.synthetic.scenario: known_answer (the events are known there only)"
        )
    _, events = generate_known_answer(
        syn["n_train"],
        syn["n_valid"],
        syn["n_test"],
        d["lengths"],
        np.random.default_rng(syn["seed"]),
        return_events=True,
    )
    out = {}
    for m, centres in events[split].items():
        t = np.arange(d["lengths"][m])[None, :, None]
        near = np.abs(t - centres[:, None, :]) <= 1.0  # (N, T, K); NaN centres compare False
        out[m] = near.any(-1).astype(np.float32)
    return out


@torch.no_grad()
def attention_shares(model, inputs: dict[str, torch.Tensor], pairs, masks, batch: int = 100) -> dict[str, Any]:
    """Per pair: mean share of row mass on the key modality's event steps (all rows), the same
    on the query modality's event rows only, and the chance share."""
    out = {}
    n = next(iter(inputs.values())).shape[0]
    for pair in pairs:
        kv, q = parse_pair(pair)
        key_mask = torch.from_numpy(masks[kv])  # (N, Tk)
        row_mask = torch.from_numpy(masks[q]) if q in masks else None
        tot = ev = ev_rows = 0.0
        n_rows = n_ev_rows = 0.0
        for lo in range(0, n, batch):
            x = {m: v[lo : lo + batch] for m, v in inputs.items()}
            maps = model(x, Request(maps=frozenset([pair]))).maps[pair]  # layers of (B, H, Tq, Tk)
            km = key_mask[lo : lo + batch]
            for a in maps:
                a = a.mean(1)  # (B, Tq, Tk)
                share = (a * km[:, None, :]).sum(-1)  # (B, Tq)
                ev += float(share.sum())
                n_rows += share.numel()
                if row_mask is not None and row_mask.shape[1] == share.shape[1]:
                    rm = row_mask[lo : lo + batch]
                    ev_rows += float((share * rm).sum())
                    n_ev_rows += float(rm.sum())
            tot += float(km.mean()) * km.shape[0]
        out[pair] = {
            "share": ev / n_rows,
            "share_event_rows": ev_rows / n_ev_rows if n_ev_rows else float("nan"),
            "chance": tot / n,
        }
    return out


def event_attention(reg: Registry, students: list[str]) -> pd.DataFrame:
    """One row per (model, seed, pair) on the test split."""
    from mmdistill.experiment import load_model
    from mmdistill.models.configurations import CONFIGURATIONS

    masks = event_masks(reg)
    split = load_split(reg.prepared(), "test")
    rows = []
    teachers = {reg.students[s].teacher for s in students if reg.students[s].distils}
    pairs = CONFIGURATIONS[reg.students[students[0]].configuration].distilled_pairs
    for seed in reg.seeds:
        named = [("teacher", t) for t in sorted(teachers)] + [("student", s) for s in students]
        for role, name in named:
            model = load_model(reg.checkpoint(Run(role, name, seed)))
            for pair, r in attention_shares(model, split.inputs, pairs, masks).items():
                rows.append({"role": role, "name": name, "seed": seed, "pair": pair, **r})
        log.info("event attention: seed %d done", seed)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    g = df.groupby(["role", "name", "pair"], sort=False)
    s = g[["share", "share_event_rows", "chance"]].agg(["mean", "std"])
    lines = [
        "| Model | Pair | Mass on video event steps (%) | Same, event query rows only (%) | Chance (%) |",
        "|---|---|---|---|---|",
    ]
    for (role, name, pair), r in s.iterrows():
        ev_rows = r[("share_event_rows", "mean")]
        lines.append(
            f"| {role} `{name}` | {pair} | {100 * r[('share', 'mean')]:.1f} ± {100 * r[('share', 'std')]:.1f} | "
            + (f"{100 * ev_rows:.1f} ± {100 * r[('share_event_rows', 'std')]:.1f}" if not np.isnan(ev_rows) else "–")
            + f" | {100 * r[('chance', 'mean')]:.1f} |"
        )
    return "\n".join(lines) + "\n"
