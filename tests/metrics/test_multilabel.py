"""Multi-label metrics, every number checked against scikit-learn: on random scores shaped like a real
evaluation (ties, a class without positives, images without labels) and on the outputs of a real model
(kiln's mlp trained on scikit-learn's digits, with labels derived from the digit: even, prime, ...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from sklearn.datasets import load_digits

from kiln.metrics.multilabel import (
    average_precision,
    hamming_loss,
    mean_average_precision,
    multilabel_report,
    pr_curves,
    precision_recall_f1,
    subset_accuracy,
    tune_thresholds,
)
from kiln.models import create_model
from tests.conftest import one_thread

# properties of a digit 0-9: a digit 1 has none of them, and the test split below holds no 0
ATTRIBUTES = {
    "even": {0, 2, 4, 6, 8},
    "prime": {2, 3, 5, 7},
    "closed_loop": {0, 4, 6, 8, 9},
    "five_or_more": {5, 6, 7, 8, 9},
    "zero": {0},
}


def random_outputs(n: int = 600, k: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets at varied rates (class 3 never positive), scores that carry signal, rounded to 0.01 so
    many scores tie (as a quantised or saturated model's do)."""
    gen = torch.Generator().manual_seed(seed)
    rates = torch.linspace(0.02, 0.5, k)
    targets = torch.rand(n, k, generator=gen) < rates
    targets[:, 3] = False
    logits = 1.5 * targets.float() - 1.0 + torch.randn(n, k, generator=gen)
    return (torch.sigmoid(logits) * 100).round() / 100, targets


@pytest.fixture(scope="module")
def digit_outputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores of kiln's mlp trained (full batch, 150 Adam steps, < 1 s) on the first 1,200 digits
    for the five attributes, on the rest of the digits but the zeros (so 'zero' has no positive)."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    labels = torch.tensor(digits.target)
    targets = torch.stack([torch.isin(labels, torch.tensor(sorted(d))) for d in ATTRIBUTES.values()], 1)
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=len(ATTRIBUTES), in_channels=1, image_size=(8, 8), hidden=[32])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with one_thread():
        for _ in range(150):
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(model(images[:1200]), targets[:1200].float()).backward()
            optimizer.step()
    test = (torch.arange(len(labels)) >= 1200) & (labels != 0)
    with torch.no_grad():
        scores = torch.sigmoid(model(images[test]))
    return scores, targets[test]


OUTPUTS = ["random", "digits"]


@pytest.fixture(params=OUTPUTS)
def outputs(request: pytest.FixtureRequest, digit_outputs) -> tuple[torch.Tensor, torch.Tensor]:
    return random_outputs() if request.param == "random" else digit_outputs


def test_the_outputs_cover_the_hard_cases(outputs) -> None:
    _, targets = outputs
    assert int((targets.sum(0) == 0).sum()) == 1  # one class without a positive
    assert int((targets.sum(1) == 0).sum()) > 0  # images without any label


def test_average_precision_per_class_matches_sklearn(outputs) -> None:
    scores, targets = outputs
    ap = average_precision(scores, targets)
    for k in range(scores.shape[1]):
        if targets[:, k].any():
            assert float(ap[k]) == pytest.approx(
                skm.average_precision_score(targets[:, k].numpy(), scores[:, k].numpy()), abs=1e-6
            )
        else:
            assert ap[k].isnan()


def test_map_macro_skips_classes_without_positives_and_micro_pools_all_pairs(outputs) -> None:
    scores, targets = outputs
    present = targets.any(0).numpy()
    got = mean_average_precision(scores, targets)
    per_class = skm.average_precision_score(
        targets.numpy()[:, present], scores.numpy()[:, present], average=None
    )
    assert got["map_macro"] == pytest.approx(per_class.mean(), abs=1e-6)
    assert got["map_classes"] == int(present.sum())
    assert got["map_micro"] == pytest.approx(
        skm.average_precision_score(targets.numpy(), scores.numpy(), average="micro"), abs=1e-6
    )


def brute_force_thresholds(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 counted at every distinct score of every class; the highest cut among the best."""
    best_t, best_f1 = [], []
    for k in range(scores.shape[1]):
        positives = targets[:, k].sum()
        if not positives:
            best_t.append(0.5)
            best_f1.append(0.0)
            continue
        cuts = np.unique(scores[:, k])
        predicted = scores[None, :, k] >= cuts[:, None]  # [cuts, N]
        f1 = 2 * (predicted & targets[None, :, k]).sum(1) / (predicted.sum(1) + positives)
        best_t.append(cuts[f1 == f1.max()].max())
        best_f1.append(f1.max())
    return np.array(best_t), np.array(best_f1)


def test_tuned_thresholds_are_the_exact_best_cuts_with_ties_to_the_higher(outputs) -> None:
    scores, targets = outputs
    thresholds, f1 = tune_thresholds(scores, targets)
    want_t, want_f1 = brute_force_thresholds(scores.numpy(), targets.numpy())
    assert thresholds.numpy() == pytest.approx(want_t, abs=0)
    assert f1.numpy() == pytest.approx(want_f1, abs=1e-12)


def test_the_tuned_f1_is_sklearns_f1_at_the_tuned_thresholds(outputs) -> None:
    scores, targets = outputs
    thresholds, f1 = tune_thresholds(scores, targets)
    preds = (scores >= thresholds).numpy()
    want = skm.f1_score(targets.numpy(), preds, average=None, zero_division=0)
    assert f1.numpy() == pytest.approx(want, abs=1e-12)


def test_tuning_breaks_an_f1_tie_toward_the_higher_threshold() -> None:
    # cut at 0.9: TP 1, predicted 1 -> F1 2/3; cut at 0.5: TP 2, predicted 4 -> F1 4/6, the same
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.5], [0.1]])
    targets = torch.tensor([[1], [0], [0], [1], [0]])
    thresholds, f1 = tune_thresholds(scores, targets)
    assert float(thresholds[0]) == pytest.approx(0.9)
    assert float(f1[0]) == pytest.approx(2 / 3)


def test_tuned_thresholds_beat_one_half_on_the_data_they_were_tuned_on(outputs) -> None:
    scores, targets = outputs
    thresholds, _ = tune_thresholds(scores, targets)
    tuned = precision_recall_f1(scores, targets, thresholds)["f1"]
    half = precision_recall_f1(scores, targets, 0.5)["f1"]
    assert bool((tuned >= half).all())


@pytest.mark.parametrize("at", ["tuned", "half"])
def test_per_class_precision_recall_f1_support_match_sklearn(outputs, at: str) -> None:
    scores, targets = outputs
    thresholds = tune_thresholds(scores, targets)[0] if at == "tuned" else 0.5
    got = precision_recall_f1(scores, targets, thresholds)
    preds = (scores >= torch.as_tensor(thresholds, dtype=scores.dtype)).numpy()
    want = skm.precision_recall_fscore_support(targets.numpy(), preds, average=None, zero_division=0)
    for name, expected in zip(("precision", "recall", "f1", "support"), want, strict=True):
        assert got[name].numpy() == pytest.approx(expected, abs=1e-6), name


def _sklearn_at(scores: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | float) -> dict:
    y_true = targets.numpy()
    y_pred = (scores >= torch.as_tensor(thresholds, dtype=scores.dtype)).numpy()
    want = {
        "subset_accuracy": skm.accuracy_score(y_true, y_pred),
        "hamming_loss": skm.hamming_loss(y_true, y_pred),
    }
    for average in ("macro", "micro"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        want[average] = {"precision": p, "recall": r, "f1": f}
    return want


def test_report_matches_sklearn_at_the_given_thresholds_and_at_one_half(outputs) -> None:
    scores, targets = outputs
    thresholds, _ = tune_thresholds(scores, targets)
    classes = [f"c{k}" for k in range(scores.shape[1])]
    report = multilabel_report(scores, targets, classes, thresholds)
    for section, cuts in ((report, thresholds), (report["at_0.5"], 0.5)):
        want = _sklearn_at(scores, targets, cuts)
        for key in ("subset_accuracy", "hamming_loss"):
            assert section[key] == pytest.approx(want[key], abs=1e-6), key
        for average in ("macro", "micro"):
            assert section[average] == pytest.approx(want[average], abs=1e-6), average


def test_report_holds_ap_support_thresholds_and_none_where_undefined(outputs) -> None:
    scores, targets = outputs
    classes = [f"c{k}" for k in range(scores.shape[1])]
    thresholds, _ = tune_thresholds(scores, targets)
    report = multilabel_report(scores, targets, classes, thresholds)
    absent = classes[int((targets.sum(0) == 0).nonzero())]
    assert report["num_samples"] == len(scores)
    assert report["per_class"][absent]["ap"] is None
    assert report["per_class"][absent]["support"] == 0
    assert report["thresholds"] == {
        c: pytest.approx(float(t)) for c, t in zip(classes, thresholds, strict=True)
    }
    assert report["map_macro"] == pytest.approx(mean_average_precision(scores, targets)["map_macro"])


def test_subset_accuracy_and_hamming_loss_at_one_half_match_sklearn(outputs) -> None:
    scores, targets = outputs
    want = _sklearn_at(scores, targets, 0.5)
    assert subset_accuracy(scores, targets) == pytest.approx(want["subset_accuracy"], abs=1e-6)
    assert hamming_loss(scores, targets) == pytest.approx(want["hamming_loss"], abs=1e-6)


def test_pr_curves_integrate_to_sklearn_average_precision(outputs) -> None:
    scores, targets = outputs
    curves = pr_curves(scores, targets)
    for k, (precision, recall) in enumerate(curves):
        if not targets[:, k].any():
            continue
        area = float(-((recall[1:] - recall[:-1]) * precision[:-1]).sum())  # recall runs high to low
        assert area == pytest.approx(
            skm.average_precision_score(targets[:, k].numpy(), scores[:, k].numpy()), abs=1e-5
        )


def test_the_real_model_learned_something(digit_outputs) -> None:
    """The checks above are only meaningful on a model that is neither random nor perfect."""
    scores, targets = digit_outputs
    got = mean_average_precision(scores, targets)
    assert 0.8 < got["map_macro"] < 1.0


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        average_precision(torch.rand(4, 3), torch.ones(4, 2))
