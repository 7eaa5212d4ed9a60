"""Attention mass on the planted events of the known_answer data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdistill.models.outputs import ModelOutput
from mmdistill.registry import Registry
from mmdistill.report.event_attention import attention_shares, event_masks


class MapModel:
    """Hands out fixed maps (B, 1, Tq, Tk) for every requested pair."""

    def __init__(self, maps):
        self.maps = maps

    def __call__(self, x, request):
        b = next(iter(x.values())).shape[0]
        return ModelOutput(None, None, maps={p: [self.maps[:b]] for p in request.maps})


def test_shares_of_uniform_and_of_event_focused_maps():
    n, t = 4, 10
    key = np.zeros((n, t), np.float32)
    key[:, [2, 3, 7]] = 1  # 3 of 10 key steps are events
    rows = np.zeros((n, t), np.float32)
    rows[:, 5] = 1
    masks = {"V": key, "A": rows}
    inputs = {"V": torch.zeros(n, t, 1)}
    uniform = MapModel(torch.full((n, 1, t, t), 1 / t))
    r = attention_shares(uniform, inputs, ("V<-A",), masks)["V<-A"]
    assert r["share"] == pytest.approx(0.3) and r["chance"] == pytest.approx(0.3)
    focused = torch.zeros(n, 1, t, t)
    focused[..., 2] = 1.0  # every row on an event step
    focused[:, :, 0, 2], focused[:, :, 0, 0] = 0.0, 1.0  # except row 0
    r = attention_shares(MapModel(focused), inputs, ("V<-A",), masks, batch=3)["V<-A"]
    assert r["share"] == pytest.approx(0.9) and r["share_event_rows"] == pytest.approx(1.0)


def test_event_masks_need_the_known_answer_data(params):
    with pytest.raises(ValueError, match="known_answer"):
        event_masks(Registry(params))
    params["data"]["synthetic"]["scenario"] = "known_answer"
    masks = event_masks(Registry(params))
    n_test, lengths = params["data"]["synthetic"]["n_test"], params["data"]["lengths"]
    assert masks["V"].shape == (n_test, lengths["V"]) and masks["L"].shape == (n_test, lengths["L"])
    assert 0 < masks["V"].mean() < 0.6 and set(np.unique(masks["A"])) <= {0.0, 1.0}
