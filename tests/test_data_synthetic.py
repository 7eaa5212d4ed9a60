"""The synthetic generator: determinism, layout, padding, labels, defects, planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from mmdistill.data.synthetic import LABEL_CLASS_PROBS, generate, label_levels, score_to_label

LENGTHS = {"V": 12, "A": 10, "L": 6}
SIZES = (60, 20, 30)


def make(seed: int = 0, sizes=SIZES, lengths=LENGTHS):
    return generate(*sizes, lengths, np.random.default_rng(seed))


def test_same_seed_identical_and_other_seed_different():
    a, b, c = make(1), make(1), make(2)
    for split in a:
        for key in a[split]:
            np.testing.assert_array_equal(a[split][key], b[split][key])
    assert not np.array_equal(np.nan_to_num(a["train"]["text"]), np.nan_to_num(c["train"]["text"]))
    assert not np.array_equal(a["train"]["labels"], c["train"]["labels"])


def test_layout_and_shapes():
    raw = make()
    for split, n in zip(("train", "valid", "test"), SIZES):
        d = raw[split]
        assert d["text"].shape == (n, 6, 300) and d["text"].dtype == np.float32
        assert d["audio"].shape == (n, 10, 74)
        assert d["vision"].shape == (n, 12, 35)
        assert d["labels"].shape == (n, 1, 1)
        assert d["id"].shape == (n,) and len(set(d["id"])) == n


def test_left_padding_and_variable_lengths():
    raw = make()
    for key in ("text", "audio", "vision"):
        x = raw["train"][key]
        data = (x != 0).any(-1)  # (N, T): NaN counts as data
        # once a row is data, every later row is data: zeros only on the left
        assert (np.diff(data.astype(int), axis=1) >= 0).all()
        assert data[:, -1].all()  # every sample has at least one true step
        lengths = data.sum(1)
        assert lengths.min() < x.shape[1] and lengths.max() == x.shape[1]


def test_labels_multiples_of_a_third_in_range_and_skewed_positive():
    raw = make(sizes=(3000, 10, 10))
    y = raw["train"]["labels"].ravel()
    assert y.min() >= -3 and y.max() <= 3
    np.testing.assert_allclose(y * 3, np.round(y * 3), atol=1e-5)
    classes = np.round(y).astype(int) + 3
    hist = np.bincount(classes, minlength=7) / len(y)
    np.testing.assert_allclose(hist, LABEL_CLASS_PROBS, atol=0.03)
    assert (y > 0).mean() > (y < 0).mean()


def test_label_levels_and_quantile_map():
    values, probs = label_levels()
    assert len(values) == 19 and np.isclose(probs.sum(), 1)
    assert (np.diff(values) > 0).all()
    y = score_to_label(np.array([-10.0, 0.0, 10.0]))
    assert y[0] == -3 and y[-1] == 3 and -3 < y[1] < 3


def test_audio_has_neginf_and_nan_only_in_true_frames():
    raw = make(sizes=(200, 5, 5))
    a = raw["train"]["audio"]
    assert np.isneginf(a).any()
    assert np.isnan(a).any()
    assert not np.isnan(raw["train"]["text"]).any() and np.isfinite(raw["train"]["vision"]).all()


def test_video_is_a_weaker_view_of_the_label_than_language_and_audio():
    """Ridge on time-summed features: language and audio explain the label better than video,
    and video explains part of it."""
    raw = make(sizes=(3000, 10, 10), lengths={"V": 20, "A": 20, "L": 10})
    y = raw["train"]["labels"].ravel()
    half = len(y) // 2

    def r2(key):
        x = np.nan_to_num(raw["train"][key], nan=0, posinf=0, neginf=0).sum(1)  # (N, D)
        x = (x - x.mean(0)) / x.std(0)
        a, b = x[:half], x[half:]
        w = np.linalg.solve(a.T @ a + 100 * np.eye(a.shape[1]), a.T @ (y[:half] - y[:half].mean()))
        pred = b @ w + y[:half].mean()
        return 1 - ((y[half:] - pred) ** 2).mean() / y[half:].var()

    r2_v, r2_a, r2_l = r2("vision"), r2("audio"), r2("text")
    assert r2_l > r2_v + 0.1 and r2_a > r2_v + 0.08, (r2_v, r2_a, r2_l)
    assert r2_v > 0.15, r2_v


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid"):
        generate(5, 0, 5, LENGTHS, np.random.default_rng(0))
    with pytest.raises(ValueError, match="lengths"):
        generate(5, 5, 5, {"V": 5, "A": 5}, np.random.default_rng(0))


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    """In-sample R^2 of a least-squares fit of y on x (with intercept)."""
    a = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return 1 - np.var(y - a @ coef) / np.var(y)


def test_known_answer_label_is_in_the_video_at_the_marked_moments():
    """The planted structure of the known_answer scenario: read at the event steps (which audio
    marks clearly), the video predicts the label; averaged over time it predicts far less;
    audio carries nothing about the label; the default scenario is unchanged."""
    from mmdistill.data.synthetic import generate_known_answer

    lengths = {"V": 40, "A": 40, "L": 16}
    raw, events = generate_known_answer(800, 10, 10, lengths, np.random.default_rng(3), return_events=True)
    again = generate_known_answer(800, 10, 10, lengths, np.random.default_rng(3))
    np.testing.assert_array_equal(raw["train"]["vision"], again["train"]["vision"])
    d, ev = raw["train"], events["train"]
    y = d["labels"].reshape(-1)
    v = d["vision"]
    steps = np.rint(ev["V"])  # (N, K), NaN for absent events
    at_events = np.stack(
        [
            v[i, steps[i][~np.isnan(steps[i])].astype(int)].sum(0) / np.sqrt((~np.isnan(steps[i])).sum())
            for i in range(len(v))
        ]
    )
    true = (np.abs(v).sum(-1) > 0)[..., None]
    averaged = (v * true).sum(1) / true.sum(1)
    audio = np.nan_to_num(d["audio"], neginf=0.0)
    r2_events, r2_avg, r2_audio = _r2(at_events, y), _r2(averaged, y), _r2(audio.mean(1), y)
    assert r2_events > 0.6, r2_events  # 0.71 measured
    assert r2_avg < 0.75 * r2_events, (r2_avg, r2_events)  # 0.45 measured
    assert r2_audio < 0.15, r2_audio  # chance level: 74 regressors, 800 samples, in-sample (0.09 measured)
    # audio's marker: its steps at the events stand out from its other true steps
    a_steps = np.rint(events["train"]["A"])
    on = np.concatenate([audio[i, a_steps[i][~np.isnan(a_steps[i])].astype(int)] for i in range(50)])
    assert np.linalg.norm(on.mean(0) - audio[:50].reshape(-1, audio.shape[-1]).mean(0)) > 1.5
    with pytest.raises(ValueError, match="at least 1"):
        generate_known_answer(0, 1, 1, lengths, np.random.default_rng(0))
