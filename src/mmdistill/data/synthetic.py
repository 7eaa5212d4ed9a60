"""A synthetic stand-in for CMU-MOSEI with planted cross-modal structure.

It has the layout of MulT's unaligned pickle (Tsai et al. 2019, yaohungt/Multimodal-Transformer,
``mosei_senti_data_noalign.pkl``): ``split -> {text (N,T_L,300), audio (N,T_A,74),
vision (N,T_V,35), labels (N,1,1), id (N,)}``, sequences zero LEFT-padded, so every later stage
runs on it unchanged and a whole pipeline can be tested without the real data.

Generative model (one sample; every constant lives in :class:`GenerativeModel`):

1. Latent factors, all independent N(0, 1): a common factor ``c`` and one private factor per
   modality ``p_L, p_A, p_V``.
2. Sentiment score ``y = (w_c c + w_L p_L + w_A p_A + w_V p_V + w_e e) / s`` with ``e ~ N(0, 1)``
   (annotator noise) and ``s`` making ``y ~ N(0, 1)``. The label is the quantile of ``Phi(y)``
   in a fixed MOSEI-like distribution over the 19 values ``-3, -8/3, ..., 3`` (averages of
   three annotators), skewed positive with most mass on the classes 0 and +1
   (:data:`LABEL_CLASS_PROBS`). The label is a monotone function of ``y``.
3. Duration: a fraction ``f ~ U(f_min, f_max)`` of the padded length; the true length of
   modality m is ``clip(round(f T_m), 1, T_m)`` (long segments are long in every modality).
4. Events: ``K`` in 1..3 moments at relative positions ``u_k ~ U(0.1, 0.9)`` of the segment,
   the same in every modality (cross-modally synchronized). At an event, modality m gets a
   Gaussian bump in time (width ``event_width * T_m`` steps) carrying a marker direction
   (so attention can find events whatever the sentiment), ``c`` along a "common" direction and
   ``p_m`` along a "private" direction. Language and audio carry ``c`` strongly; video carries
   it weakly and with fresh noise at every event (``c + video_common_noise * xi_k``), so video
   alone predicts only part of what language and audio know, and that part is learnable
   from video.
5. Background: per-modality feature means and scales plus i.i.d. Gaussian noise at every
   true step; padding rows are exactly zero.
6. Audio defects as in real COVAREP features: ``-inf`` in two "log energy" columns at a
   fraction of frames, and rare frames that are entirely NaN.

So language and audio carry more of the label than video (``w_c`` reaches them cleanly), part
of what they carry (``c``) is predictable from video, and the evidence is temporally localized
and synchronized across modalities. Everything is drawn from the ``np.random.Generator``
passed in, in a fixed order: the same seed gives identical arrays.

Scenario ``known_answer`` (:func:`generate_known_answer`, ``data.synthetic.scenario``): a data
set whose answer to "what can each level of distillation carry?" is known beforehand; see
docs/known-answer.md and :class:`KnownAnswerModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from mmdistill.data import SPLITS
from mmdistill.modalities import FEATURE_DIM, FILE_KEY, MODALITIES

# Approximate MOSEI-like class probabilities for the rounded labels -3..3 (skewed positive,
# mass on 0 and +1). These are chosen by hand, not measured on MOSEI.
LABEL_CLASS_PROBS = np.array([0.02, 0.07, 0.15, 0.30, 0.29, 0.14, 0.03])
# Split of each class over its multiples of 1/3: -3 -> {-3, -8/3}; k -> {k-1/3, k, k+1/3}.
_WITHIN_CLASS = {3: (0.5, 0.5), 1: (0.3, 0.4, 0.3)}


@dataclass(frozen=True)
class GenerativeModel:
    """Constants of the synthetic generative model (see the module docstring)."""

    w_common: float = 0.62  # label weight of the common factor c
    w_private: tuple[tuple[str, float], ...] = (("L", 0.42), ("A", 0.30), ("V", 0.30))
    w_noise: float = 0.30  # annotator noise
    # event amplitudes along the common / private / marker directions (background std is 1)
    amp_common: tuple[tuple[str, float], ...] = (("L", 4.0), ("A", 3.5), ("V", 1.0))
    amp_private: tuple[tuple[str, float], ...] = (("L", 3.0), ("A", 3.0), ("V", 3.0))
    amp_marker: float = 3.0
    video_common_noise: float = 0.8  # std of the per-event noise on c seen by video
    event_width: float = 0.06  # bump std as a fraction of the padded length (>= 0.6 step)
    max_events: int = 3
    f_min: float = 0.35  # duration as a fraction of the padded length
    f_max: float = 1.3
    background_std: float = 1.0
    neginf_columns: tuple[int, ...] = (0, 1)  # audio columns that hold -inf at some frames
    p_neginf: float = 0.02  # per true frame and column
    p_nan_row: float = 3e-4  # per true audio frame: whole row NaN


def label_levels() -> tuple[np.ndarray, np.ndarray]:
    """The 19 label values (multiples of 1/3 in [-3, 3]) and their probabilities."""
    values, probs = [], []
    for k, pk in zip(range(-3, 4), LABEL_CLASS_PROBS):
        if k == -3:
            vals, split = (-3.0, -8 / 3), _WITHIN_CLASS[3]
        elif k == 3:
            vals, split = (8 / 3, 3.0), _WITHIN_CLASS[3]
        else:
            vals, split = (k - 1 / 3, float(k), k + 1 / 3), _WITHIN_CLASS[1]
        values += vals
        probs += [pk * s for s in split]
    order = np.argsort(values)
    probs = np.asarray(probs)[order]
    return np.asarray(values)[order], probs / probs.sum()


def score_to_label(y: np.ndarray) -> np.ndarray:
    """Map standard-normal scores to labels by quantiles of the MOSEI-like distribution."""
    values, probs = label_levels()
    edges = np.cumsum(probs)[:-1]  # (18,)
    idx = np.searchsorted(edges, ndtr(y), side="right")
    return values[idx]


def generate(
    n_train: int,
    n_valid: int,
    n_test: int,
    lengths: dict[str, int],
    rng: np.random.Generator,
    model: GenerativeModel = GenerativeModel(),
    feature_dims: dict[str, int] = FEATURE_DIM,
) -> dict[str, dict[str, np.ndarray]]:
    """Draw a synthetic data set in MulT pickle layout (see the module docstring); feature
    widths ``feature_dims`` (default MulT's MOSEI widths, 35 / 74 / 300)."""
    sizes = _checked_sizes(n_train, n_valid, n_test, lengths)
    n = sum(sizes.values())
    world = {m: _modality_world(feature_dims[m], rng) for m in MODALITIES}

    # latent factors and labels
    c = rng.standard_normal(n)  # (N,)
    private = {m: rng.standard_normal(n) for m in MODALITIES}
    w_priv = dict(model.w_private)
    score = model.w_common * c + model.w_noise * rng.standard_normal(n)
    score += sum(w_priv[m] * private[m] for m in MODALITIES)
    score /= np.sqrt(model.w_common**2 + model.w_noise**2 + sum(w**2 for w in w_priv.values()))
    labels = score_to_label(score).astype(np.float32)

    # durations and synchronized events
    frac = rng.uniform(model.f_min, model.f_max, n)  # (N,)
    n_events = 1 + rng.binomial(model.max_events - 1, 0.5, n)  # (N,) in 1..max_events
    active = np.arange(model.max_events)[None, :] < n_events[:, None]  # (N, K)
    where = np.sort(rng.uniform(0.1, 0.9, (n, model.max_events)), axis=1)  # (N, K)
    common_seen = {m: np.repeat(c[:, None], model.max_events, axis=1) for m in MODALITIES}
    common_seen["V"] = common_seen["V"] + model.video_common_noise * rng.standard_normal((n, model.max_events))

    amp_c, amp_p = dict(model.amp_common), dict(model.amp_private)
    arrays = {}
    for m in MODALITIES:
        T, D = lengths[m], feature_dims[m]
        true_len = np.clip(np.round(frac * T), 1, T).astype(np.int64)  # (N,)
        start = T - true_len  # first true row
        t = np.arange(T, dtype=np.float64)
        _, bump = _bumps(where, start, true_len, t, max(0.6, model.event_width * T))  # (N, T, K)
        bump *= active[:, None, :]
        mu, scale, d_common, d_private, d_marker = world[m]
        content = (
            amp_c[m] * common_seen[m][..., None] * d_common  # (N, K, D)
            + amp_p[m] * private[m][:, None, None] * d_private
            + model.amp_marker * d_marker
        )
        x = rng.standard_normal((n, T, D), dtype=np.float32) * np.float32(model.background_std)
        x = x * scale.astype(np.float32) + mu.astype(np.float32)  # (N, T, D)
        x += np.matmul(bump, content).astype(np.float32)
        if m == "A":
            _audio_defects(x, start, model, rng)
        x[t[None, :] < start[:, None]] = 0.0  # left padding
        arrays[FILE_KEY[m]] = x

    return _split(arrays, labels, sizes)


SCENARIOS = ("mosei_like", "known_answer")


@dataclass(frozen=True)
class KnownAnswerModel:
    """Constants of the ``known_answer`` scenario (background std is 1 in every modality).

    Per sample, 1..``max_events`` events at relative positions ``u_k ~ U(0.1, 0.9)`` of the
    segment, the same in every modality, each with a value ``v_k ~ N(0, 1)``; label score
    ``y = (sum_k v_k / sqrt(K) + noise * e) / sqrt(1 + noise^2)``, mapped to the 19 MOSEI-like
    label values as in the default scenario.

    * Audio and language: a strong marker bump at every event (``amp_marker``), nothing about
      the label.
    * Video: at every event the value ``v_k`` along a "content" direction (``amp_content``)
      and a faint marker (``video_marker``); besides, ``n_distractors`` bumps at other random
      moments carry random values ``w_j ~ N(0, 1)`` along the same content direction and no
      marker. So the label is in the video alone, but only at the moments audio and language
      mark clearly; read anywhere else (or averaged over time) the video gives event values
      plus as many distractor values.
    * With ``code_dim > 0`` every event k also carries a random code ``e_k ~ N(0, I)`` of that
      dimension, the same in all three modalities (each through its own fixed orthonormal
      basis, amplitude ``amp_code``), and every video distractor a code of its own that no
      other modality shows. A cross-modal query from audio or language can then find the
      matching video step by content (a linear map between the code bases), while the video
      alone cannot tell an event's code from a distractor's.
    """

    amp_marker: float = 3.0
    amp_content: float = 3.0
    video_marker: float = 0.7
    other_background: float = 0.3  # background std of audio and language (video: 1)
    code_dim: int = 0  # > 0: every bump carries a random code (see below)
    amp_code: float = 2.0
    n_distractors: int = 2
    noise: float = 0.2
    event_width: float = 0.04  # bump std as a fraction of the padded length (>= 0.6 step)
    max_events: int = 3
    f_min: float = 0.6
    f_max: float = 1.0


def generate_known_answer(
    n_train: int,
    n_valid: int,
    n_test: int,
    lengths: dict[str, int],
    rng: np.random.Generator,
    model: KnownAnswerModel = KnownAnswerModel(),
    return_events: bool = False,
):
    """Draw the ``known_answer`` scenario in MulT pickle layout (see :class:`KnownAnswerModel`).

    With ``return_events`` also returns, per split, the event centres in steps per modality:
    ``{split: {modality: (N, max_events) float, NaN where a sample has fewer events}}``.
    Audio gets the same -inf / NaN defects as the default scenario, so ``prepare`` is exercised.
    """
    sizes = _checked_sizes(n_train, n_valid, n_test, lengths)
    n = sum(sizes.values())
    world = {m: _modality_world(FEATURE_DIM[m], rng) for m in MODALITIES}
    K, J = model.max_events, model.n_distractors
    n_events = 1 + rng.binomial(K - 1, 0.5, n)  # (N,)
    active = np.arange(K)[None, :] < n_events[:, None]  # (N, K)
    where = np.sort(rng.uniform(0.1, 0.9, (n, K)), axis=1)  # (N, K)
    values = rng.standard_normal((n, K)) * active  # (N, K), 0 for inactive events
    score = values.sum(1) / np.sqrt(n_events) + model.noise * rng.standard_normal(n)
    labels = score_to_label(score / np.sqrt(1 + model.noise**2)).astype(np.float32)
    d_where = rng.uniform(0.05, 0.95, (n, J))  # (N, J) distractor positions
    d_values = rng.standard_normal((n, J))
    r = model.code_dim
    codes = rng.standard_normal((n, K, r)) if r else None  # (N, K, r) event codes
    d_codes = rng.standard_normal((n, J, r)) if r else None  # (N, J, r) distractor codes
    bases = {m: np.linalg.qr(rng.standard_normal((FEATURE_DIM[m], r)))[0].T for m in MODALITIES} if r else None
    frac = rng.uniform(model.f_min, model.f_max, n)
    defect_model = GenerativeModel()
    arrays, events = {}, {}
    for m in MODALITIES:
        T, D = lengths[m], FEATURE_DIM[m]
        true_len = np.clip(np.round(frac * T), 1, T).astype(np.int64)
        start = T - true_len
        t = np.arange(T, dtype=np.float64)
        width = max(0.6, model.event_width * T)
        pos, b = _bumps(where, start, true_len, t, width)
        b = b * active[:, None, :]
        events[m] = np.where(active, pos, np.nan)
        mu, scale, d_content, _, d_marker = world[m]
        x = rng.standard_normal((n, T, D), dtype=np.float32)
        if m != "V" and model.other_background != 1.0:
            x *= np.float32(model.other_background)
        x = x * scale.astype(np.float32) + mu.astype(np.float32)
        code = model.amp_code * codes @ bases[m] if r else 0.0  # (N, K, D)
        if m == "V":
            content = model.amp_content * values[..., None] * d_content + model.video_marker * d_marker + code
            x += np.matmul(b, content).astype(np.float32)
            _, bd = _bumps(d_where, start, true_len, t, width)
            d_content_all = model.amp_content * d_values[..., None] * d_content  # (N, J, D)
            if r:
                d_content_all = d_content_all + model.amp_code * d_codes @ bases[m]
            x += np.matmul(bd, d_content_all).astype(np.float32)
        else:
            x += np.matmul(b, np.broadcast_to(model.amp_marker * d_marker, (n, K, D)) + code).astype(np.float32)
        if m == "A":
            _audio_defects(x, start, defect_model, rng)
        x[t[None, :] < start[:, None]] = 0.0
        arrays[FILE_KEY[m]] = x

    out = _split(arrays, labels, sizes)
    if not return_events:
        return out
    bounds = np.cumsum([0] + [sizes[split] for split in SPLITS])
    ev = {split: {m: e[bounds[i] : bounds[i + 1]] for m, e in events.items()} for i, split in enumerate(SPLITS)}
    return out, ev


def _checked_sizes(n_train: int, n_valid: int, n_test: int, lengths: dict[str, int]) -> dict[str, int]:
    """The split sizes by name, after checking them and the sequence lengths."""
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for split, n in sizes.items():
        if n < 1:
            raise ValueError(f"synthetic split '{split}' must have at least 1 sample, got {n}")
    for m in MODALITIES:
        if lengths.get(m, 0) < 1:
            raise ValueError(f"lengths[{m!r}] must be a positive integer, got {lengths.get(m)}")
    return sizes


def _split(
    arrays: dict[str, np.ndarray], labels: np.ndarray, sizes: dict[str, int]
) -> dict[str, dict[str, np.ndarray]]:
    """Cut the samples, drawn in split order, into the MulT pickle's splits with labels and ids."""
    out: dict[str, dict[str, np.ndarray]] = {}
    lo = 0
    for split in SPLITS:
        hi = lo + sizes[split]
        out[split] = {key: arr[lo:hi] for key, arr in arrays.items()}
        out[split]["labels"] = labels[lo:hi].reshape(-1, 1, 1)
        out[split]["id"] = np.array([f"synthetic_{split}_{i:05d}" for i in range(hi - lo)])
        lo = hi
    return out


def _bumps(
    rel: np.ndarray, start: np.ndarray, true_len: np.ndarray, t: np.ndarray, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, k) in steps of relative positions ``rel`` (N, k) of each segment, and the
    Gaussian bumps around them over the padded time axis ``t``: (N, T, k)."""
    pos = start[:, None] + rel * (true_len[:, None] - 1)
    return pos, np.exp(-0.5 * ((t[None, :, None] - pos[:, None, :]) / width) ** 2)


def _modality_world(dim: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Feature means, scales and three orthonormal directions (common, private, marker)."""
    mu = 0.5 * rng.standard_normal(dim)
    scale = rng.uniform(0.5, 1.5, dim)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 3)))  # (D, 3) orthonormal columns
    return mu, scale, q[:, 0], q[:, 1], q[:, 2]


def _audio_defects(x: np.ndarray, start: np.ndarray, model: GenerativeModel, rng: np.random.Generator) -> None:
    """Put -inf in the log-energy columns and whole-NaN rows at random true frames, in place."""
    n, T, _ = x.shape
    true = np.arange(T)[None, :] >= start[:, None]  # (N, T)
    cols = list(model.neginf_columns)
    neginf = (rng.random((n, T, len(cols))) < model.p_neginf) & true[..., None]
    sub = x[:, :, cols]
    sub[neginf] = -np.inf
    x[:, :, cols] = sub
    nan_rows = (rng.random((n, T)) < model.p_nan_row) & true
    x[nan_rows] = np.nan
