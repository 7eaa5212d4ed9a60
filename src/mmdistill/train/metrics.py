"""Classification metrics on the 7 sentiment classes.

Paper 002 reports accuracy and F1 of a 7-class classifier; we report the weighted F1
(class-frequency weighted, scikit-learn ``average='weighted'``) as the paper's F1 and the
macro F1 beside it. MAE and Pearson correlation are computed on the class index (0..6),
i.e. on the rounded sentiment, so they measure how far off a wrong class is.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from mmdistill.data import N_CLASSES


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"need two equal-length 1-D label arrays, got {y_true.shape} and {y_pred.shape}")
    labels = list(range(N_CLASSES))
    if y_pred.std() == 0 or y_true.std() == 0:
        pearson = float("nan")  # undefined for a constant prediction; reported as such
    else:
        pearson = float(np.corrcoef(y_true, y_pred)[0, 1])
    return {
        "acc7": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "mae": float(np.abs(y_true - y_pred).mean()),
        "pearson": pearson,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }
