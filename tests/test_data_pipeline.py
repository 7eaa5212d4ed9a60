"""One tiny end-to-end Snakemake run per file source, on a pickle in the published layout given
as the local ``path``: MulT's MOSI pickle (widths 300 / 5 / 20, left-padded) and MMSA's MOSEI
pickle (768-wide BERT text, right-padded with stated lengths). Each run is one seed, the complete
teacher and one or two students; every step (prepare, train, profile, report, robustness) must take
the widths from the data."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_project, run, tiny_params
from tests.data_layouts import WIDTHS_MOSEI_MMSA, WIDTHS_MOSI_MULT, dump, mmsa_layout, mult_layout

SIZES = {"train": 24, "valid": 8, "test": 8}


def small_params(source: str, dataset: str, path: str) -> dict:
    p = tiny_params()
    p["seeds"] = [0]
    p["data"].update(source=source, dataset=dataset, lengths={"V": 6, "A": 6, "L": 4})
    p["data"][source]["path"] = path
    if source == "mmsa_pkl":  # the published checksum is checked by default; this file is not the published one
        p["data"]["mmsa_pkl"]["sha256"][dataset] = None
    p["teachers"] = {"complete": {"branches": ["V", "A", "L"]}}
    p["students"] = {"nokd": {"configuration": "language_audio", "teacher": None, "method": "none", "level": None}}
    if source == "mmsa_pkl":  # one distilled student: the teacher it loads reads 768-wide text
        p["students"]["c5_hinton"] = {
            "configuration": "language_audio",
            "teacher": "complete",
            "method": "hinton",
            "level": "final",
        }
    p["train"].update(epochs=1, batch_size=8)
    p["profile"].update(repeats=1, batch_sizes=[1])
    return p


@pytest.mark.parametrize(
    ("source", "dataset", "widths"),
    [("mult_pkl", "mosi", WIDTHS_MOSI_MULT), ("mmsa_pkl", "mosei", WIDTHS_MOSEI_MMSA)],
)
def test_file_source_end_to_end(tmp_path, source, dataset, widths):
    steps = {"text": 7, "audio": 9, "vision": 8}
    layout = mult_layout if source == "mult_pkl" else mmsa_layout
    path = dump(layout(SIZES, steps, widths), tmp_path / "user_data" / f"{dataset}.pkl")
    params = small_params(source, dataset, str(path))
    project = make_project(tmp_path / "proj", params)
    run(["snakemake", "--cores", "2"], project)
    dims = {"V": widths["vision"], "A": widths["audio"], "L": widths["text"]}
    summary = json.loads((project / "data" / "prepared" / f"{source}.summary.json").read_text())
    assert summary["feature_dims"] == dims and summary["n"] == SIZES and summary["dataset"] == dataset
    assert summary["expected_sizes"]["verdict"] == "mismatch"  # a tiny subset of the published sizes
    assert ("right-padded" if source == "mmsa_pkl" else "left-padded") in summary["padding"]
    assert json.loads((project / "results" / "profile.json").read_text())["feature_dims"] == dims
    ckpt = torch.load(project / "results" / "teachers" / "complete" / "seed0" / "model.pt", weights_only=False)
    assert ckpt["blueprint"]["feature_dims"] == dims
    md = (project / "results" / "table1.md").read_text()
    assert md.startswith(f"# Table 1 — data: `{source}`; 7 classes: numpy.round(clip(y, -3, 3))")
    assert md.count("| Student |") == len(params["students"])
    assert (project / "results" / "robustness.md").read_text().count("|") > 0
