"""Classification metrics on the 7 sentiment classes.

Paper 002 reports accuracy and F1 of a 7-class classifier; we report the weighted F1
(per-class F1 weighted by the class's support, as scikit-learn's ``average='weighted'``) as
the paper's F1 and the macro F1 beside it (classes absent from both truth and prediction
count as F1 0 in the macro mean, as scikit-learn with ``labels=range(7)`` and
``zero_division=0``). MAE and Pearson correlation are computed on the class index (0..6),
i.e. on the rounded sentiment, so they measure how far off a wrong class is.

Implemented with numpy (a test checks it against scikit-learn): importing
``sklearn.metrics`` costs more than half a second in every training process.
"""

from __future__ import annotations

import numpy as np

from mmdistill.data import N_CLASSES


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predicted classes."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes**2).reshape(n_classes, n_classes)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # predicted + true = 2 tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"need two equal-length 1-D label arrays, got {y_true.shape} and {y_pred.shape}")
    if min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= N_CLASSES:
        raise ValueError(f"class indices must lie in 0..{N_CLASSES - 1}")
    cm = confusion(y_true, y_pred)
    f1 = f1_per_class(cm)
    support = cm.sum(1)
    if y_pred.std() == 0 or y_true.std() == 0:
        pearson = float("nan")  # undefined for a constant prediction; reported as such
    else:
        pearson = float(np.corrcoef(y_true, y_pred)[0, 1])
    return {
        "acc7": float(np.trace(cm) / len(y_true)),
        "f1_weighted": float((f1 * support).sum() / support.sum()),
        "f1_macro": float(f1.mean()),
        "mae": float(np.abs(y_true - y_pred).mean()),
        "pearson": pearson,
        "confusion": cm.tolist(),
        "n": int(len(y_true)),
    }
