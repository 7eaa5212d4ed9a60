import numpy as np
import pytest

from mmdistill.train.metrics import classification_metrics


def test_perfect_prediction():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 3, 3])
    m = classification_metrics(y, y)
    assert m["acc7"] == 1.0 and m["f1_weighted"] == 1.0 and m["mae"] == 0.0
    assert m["pearson"] == pytest.approx(1.0)
    assert np.trace(np.array(m["confusion"])) == len(y)


def test_known_values():
    y_true = np.array([3, 3, 3, 4])
    y_pred = np.array([3, 3, 4, 4])
    m = classification_metrics(y_true, y_pred)
    assert m["acc7"] == pytest.approx(0.75)
    assert m["mae"] == pytest.approx(0.25)
    # class 3: precision 1, recall 2/3 -> F1 0.8 (weight 3); class 4: precision 0.5, recall 1 -> 2/3 (weight 1)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 1 * (2 / 3)) / 4)
    assert m["confusion"][3][4] == 1


def test_constant_prediction_has_undefined_correlation():
    m = classification_metrics(np.array([1, 2, 3]), np.array([3, 3, 3]))
    assert np.isnan(m["pearson"])


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        classification_metrics(np.array([1, 2]), np.array([1]))
