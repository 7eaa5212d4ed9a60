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


def test_matches_scikit_learn_on_random_labels():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(0)
    for n in (5, 50, 500):
        y_true = rng.integers(0, 7, n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, 5, n))
        m = classification_metrics(y_true, y_pred)
        labels = list(range(7))
        assert m["acc7"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert m["f1_weighted"] == pytest.approx(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        )
        assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
        assert m["confusion"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
