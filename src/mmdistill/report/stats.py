"""Is a distilled student better than the student trained without distillation?

Every student row is compared with its no-KD baseline on the test accuracy and weighted F1,
paired by seed: student seed k and no-KD seed k start from the same initialization seed and
see the same data order, so the per-seed difference ``d_k = student_k - baseline_k`` removes
the seed's share of the variance. For the mean paired difference we give

* a two-sided **paired t-test** (H0: mean difference 0; statistic
  ``t = mean(d) / (sd(d) / sqrt(n))`` with n - 1 degrees of freedom; the same test as
  ``scipy.stats.ttest_rel``),
* its **t-based 95 % confidence interval** ``mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n)``,
* an **exact sign-flip permutation p-value** (two-sided, on ``|mean(d)|``), which does not
  assume normal differences. With n pairs it cannot go below ``2 / 2^n`` (0.5 for 2 seeds,
  0.25 for 3): with few seeds only the t-test can reach small p-values, and it does so by
  assuming normality.

A difference "holds" when its confidence interval excludes 0. Degenerate cases, by design:

* n = 1 pair: the difference is reported, its CI and p-values are NaN (no spread to estimate);
* all n differences equal (sd = 0, frequent with few seeds and small test sets, where
  accuracy moves in steps of 100 / n_test): the t statistic is undefined, so the CI and the
  t-test p-value are NaN (``scipy.stats.ttest_rel`` would give p = 0 and a zero-width CI,
  i.e. "significant" from two seeds); the permutation p-value is still exact (``2 / 2^n``,
  or 1 when every difference is 0);
* no common seed with the baseline, or no baseline at all: everything is NaN.

The baseline of a student is the student without distillation of the same architecture
(configuration and proxy streams, :attr:`StudentSpec.architecture`) if params.yaml has one,
else the paper's no-KD row (:func:`paper_baseline`): the paper has a single no-KD row, the
3-transformer architecture of configuration 5, and compares every row with it, although the
9-transformer student of configuration 1 and EDAM-T's full-length-proxy student are other
networks. A no-KD row of each architecture makes every difference the effect of
distillation alone. A student trained on part of the training split (``train_fraction``)
is compared with the no-KD student of its architecture trained on the same part.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from mmdistill.registry import Registry

log = logging.getLogger(__name__)

METRICS = ("acc", "f1")
CONFIDENCE = 0.95
MAX_EXACT_PAIRS = 16  # 2^16 sign patterns enumerated exactly; above, a Monte-Carlo draw
N_RANDOM_FLIPS = 100_000


@dataclass(frozen=True)
class PairedResult:
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_t: float
    p_perm: float

    @property
    def holds(self) -> bool:
        """The confidence interval excludes 0 (False when it is NaN)."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


def paired_test(
    a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE, rng: np.random.Generator | None = None
) -> PairedResult:
    """Paired comparison of ``a`` against ``b`` (same length, element k of both paired).

    ``rng`` is used only above :data:`MAX_EXACT_PAIRS` pairs (Monte-Carlo sign flips);
    a fixed-seed generator is made when none is given, so the result is reproducible.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D arrays of the same length, got {a.shape} and {b.shape}")
    d = a - b  # (n,)
    n = len(d)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    if n == 1:
        return PairedResult(1, mean, math.nan, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    p_perm = sign_flip_p(d, rng)
    if sd <= 1e-9 * max(1.0, float(np.abs(d).max())):  # sd 0 up to rounding: t undefined (module docstring)
        return PairedResult(n, mean, math.nan, math.nan, math.nan, p_perm)
    se = sd / math.sqrt(n)
    t = mean / se
    p_t = float(2 * sps.t.sf(abs(t), df=n - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df=n - 1)) * se
    return PairedResult(n, mean, mean - half, mean + half, p_t, p_perm)


def sign_flip_p(d: np.ndarray, rng: np.random.Generator | None = None) -> float:
    """Two-sided sign-flip permutation p-value of ``mean(d) = 0``: the share of the 2^n sign
    patterns whose |mean| is at least the observed |mean| (the identity pattern included)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= MAX_EXACT_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
        return float(np.mean(np.abs(signs @ d) / n >= observed - tol))
    rng = rng if rng is not None else np.random.default_rng(0)
    signs = rng.choice((1.0, -1.0), size=(N_RANDOM_FLIPS, n))
    hits = int(np.sum(np.abs(signs @ d) / n >= observed - tol))
    return (1 + hits) / (1 + N_RANDOM_FLIPS)


PAPER_ARCHITECTURE = ("language_audio", "down")  # the paper's no-KD row: configuration 5's student (Fig. 1)


def paper_baseline(reg: Registry) -> str | None:
    """The no-KD row that stands for the paper's: the first no-KD student of the paper's
    architecture, else the first no-KD student; None without any."""
    nokd = [s for s in reg.students.values() if not s.distils]
    same = [s for s in nokd if s.architecture == PAPER_ARCHITECTURE and s.train_fraction == 1]
    return (same or nokd)[0].name if nokd else None


def baselines(reg: Registry) -> dict[str, str]:
    """Student name -> the no-KD student it is compared with (see module docstring)."""
    fallback = paper_baseline(reg)
    if fallback is None:
        return {}
    by_arch: dict[tuple, str] = {}
    for s in reg.students.values():
        if not s.distils:
            by_arch.setdefault((s.architecture, s.train_fraction), s.name)
    return {
        name: by_arch.get((s.architecture, s.train_fraction), fallback) for name, s in reg.students.items() if s.distils
    }


def stat_columns(metric: str) -> list[str]:
    return [f"d_{metric}", f"d_{metric}_ci_low", f"d_{metric}_ci_high", f"p_{metric}", f"p_{metric}_perm"]


def paired_differences(reg: Registry, runs: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per distilled student: its baseline, the number of seed pairs and, per metric
    of :data:`METRICS` (percent), the mean difference, its CI and both p-values.

    ``runs`` is :func:`mmdistill.report.table.collect_runs`'s frame (role, name, seed, acc, f1).
    """
    pairs = baselines(reg)
    if not pairs and any(s.distils for s in reg.students.values()):
        log.info("no student without distillation in params: no paired differences")
    students = runs[runs.role == "student"]
    rows = []
    for name, base in pairs.items():
        a = students[students.name == name].set_index("seed")
        b = students[students.name == base].set_index("seed")
        seeds = sorted(set(a.index) & set(b.index))
        row = {"name": name, "baseline": base, "n_pairs": len(seeds)}
        for metric in METRICS:
            r = paired_test(a.loc[seeds, metric].to_numpy(), b.loc[seeds, metric].to_numpy(), confidence)
            row.update(zip(stat_columns(metric), (r.mean, r.ci_low, r.ci_high, r.p_t, r.p_perm)))
        rows.append(row)
    columns = ["name", "baseline", "n_pairs"] + [c for m in METRICS for c in stat_columns(m)]
    return pd.DataFrame(rows, columns=columns)


def add_paired_stats(table: pd.DataFrame, reg: Registry, runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1 with the paired-difference columns joined to its student rows (NaN elsewhere)."""
    diffs = paired_differences(reg, runs)
    is_student = table.network == "Student"
    keyed = diffs.set_index("name")
    out = table.copy()
    for col in diffs.columns.drop("name"):
        out[col] = [
            keyed.at[n, col] if s and n in keyed.index else (np.nan if col != "baseline" else "")
            for n, s in zip(table.name, is_student)
        ]
    return out


PAIRED_NOTE = (
    "Δ: paired difference to the student without distillation of the same architecture "
    "(configuration and proxy streams; the no-KD row named in table1.csv's `baseline` column), in "
    "points, mean over seeds with its t-based 95 % confidence interval (student seed k paired with "
    "no-KD seed k; paired t-test, p-values in table1.csv); ✓: the interval excludes 0. A single "
    "seed, or the same difference at every seed (sd 0), gives the difference alone."
)


def format_difference(row, metric: str) -> str:
    """Markdown cell: ``+1.23 [0.10, 2.36] ✓`` (✓: the CI excludes 0); ``+2.08 (sd 0)`` when
    every seed gives the same difference; ``–`` without a comparison."""
    d = getattr(row, f"d_{metric}", math.nan)
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "–"
    lo, hi = getattr(row, f"d_{metric}_ci_low"), getattr(row, f"d_{metric}_ci_high")
    if math.isnan(lo):
        return f"{d:+.2f} (sd 0)" if getattr(row, "n_pairs", 1) > 1 else f"{d:+.2f}"
    mark = " ✓" if (lo > 0 or hi < 0) else ""
    return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"
