import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from prunelab.metrics import classification_metrics, confusion_matrix


def _specificity_reference(y_true, y_pred, k):
    cm = skm.confusion_matrix(y_true, y_pred, labels=list(range(k)))
    spec = []
    for c in range(k):
        tn = cm.sum() - cm[c, :].sum() - cm[:, c].sum() + cm[c, c]
        fp = cm[:, c].sum() - cm[c, c]
        spec.append(tn / (tn + fp) if tn + fp else 0.0)
    return np.array(spec)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = 10
    y_true = rng.integers(0, k, 500)
    # mostly right, some confusion, and one class never predicted (zero division path)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, k, 500))
    y_pred[y_pred == 3] = 4
    m = classification_metrics(torch.tensor(y_true), torch.tensor(y_pred), k)
    labels = list(range(k))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for key, fn in [
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ]:
        ref = fn(y_true, y_pred, labels=labels, average=None, zero_division=0)
        assert m["per_class"][key] == pytest.approx(ref.tolist())
        assert m[key] == pytest.approx(
            fn(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        )
    spec = _specificity_reference(y_true, y_pred, k)
    assert m["per_class"]["specificity"] == pytest.approx(spec.tolist())
    assert m["specificity"] == pytest.approx(spec.mean())
    assert np.array_equal(
        np.array(m["confusion_matrix"]), skm.confusion_matrix(y_true, y_pred, labels=labels)
    )


def test_confusion_matrix_orientation_and_mismatch():
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), 2)
    assert cm.tolist() == [[0, 2], [0, 1]]
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2)


def test_three_classes_average_over_three_and_out_of_range_is_refused():
    from prunelab.errors import PrunelabError

    y_true = np.array([0, 1, 2, 2, 1, 0, 2])
    y_pred = np.array([0, 2, 2, 1, 1, 0, 0])
    m = classification_metrics(torch.tensor(y_true), torch.tensor(y_pred), 3)
    assert m["recall"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert len(m["per_class"]["f1"]) == 3
    with pytest.raises(PrunelabError, match="label 3 is outside the 3 classes"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(PrunelabError, match="prediction -1 is outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -1]), 3)
