"""Multi-label metrics: each image may carry any number of the K labels, none included. Inputs everywhere:
``scores`` [N, K] float, the sigmoid probabilities, and ``targets`` [N, K] 0/1 (int or bool). A label is
predicted when its score is >= its threshold (one float for every class, or a [K] tensor of per-class ones).

The numbers come from torchmetrics (the tests check each against scikit-learn). Conventions:
- AP of a class without a positive target is undefined: ``None`` in the report, NaN in tensors. The macro mAP
  is the mean over the classes that have at least one positive (``map_classes`` says how many);
  the micro mAP pools every (image, class) pair into one binary problem.
- Precision/recall/F1 of a class never predicted or never present are 0 (scikit-learn's ``zero_division=0``);
  macro averages run over every class, as ``kiln.metrics.compute`` does for single-label.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_hamming_distance,
    multilabel_precision,
    multilabel_precision_recall_curve,
    multilabel_recall,
)

Thresholds = float | torch.Tensor  # one for all classes, or [K]
UNTUNED = 0.5  # the threshold of a class that gives nothing to tune on, and the report's comparison point


def _check(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The targets as int64 0/1 (torchmetrics' input), after checking both shapes."""
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"multi-label scores and targets must both be [N, K]; got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    return targets.long()


def predict(scores: torch.Tensor, thresholds: Thresholds) -> torch.Tensor:
    """[N, K] int64 0/1: which labels are predicted (score >= threshold)."""
    cut = torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device)
    return (scores >= cut).long()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[K] float64, each class's AP (area under its step PR curve); NaN for a class without positives."""
    labels = _check(scores, targets)
    ap = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    present = labels.sum(0) > 0
    if present.sum() > 0:
        # only the classes that have a positive: torchmetrics (and sklearn) warn and score the others 0,
        # which would drag the macro mean down for a class nobody could have found
        cols = present.nonzero().flatten()
        ap[cols] = multilabel_average_precision(
            scores[:, cols], labels[:, cols], len(cols), average=None
        ).double()
    return ap


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float | int | None]:
    """mAP macro (over classes with a positive), micro (all pairs pooled), and how many classes the macro
    mean ran over. ``None`` where undefined (no positive at all)."""
    labels = _check(scores, targets)
    ap = average_precision(scores, labels)
    defined = ap[~ap.isnan()]
    micro = None
    if labels.sum() > 0:
        micro = float(multilabel_average_precision(scores, labels, scores.shape[1], average="micro"))
    return {
        "map_macro": float(defined.mean()) if len(defined) else None,
        "map_micro": micro,
        "map_classes": len(defined),
    }


def precision_recall_f1(
    scores: torch.Tensor, targets: torch.Tensor, thresholds: Thresholds = UNTUNED
) -> dict[str, torch.Tensor]:
    """Per class at ``thresholds``: precision, recall, f1 ([K] float64) and support ([K] int64, positives)."""
    labels = _check(scores, targets)
    preds, k = predict(scores, thresholds), scores.shape[1]
    return {
        "precision": multilabel_precision(preds, labels, k, average=None).double(),
        "recall": multilabel_recall(preds, labels, k, average=None).double(),
        "f1": multilabel_f1_score(preds, labels, k, average=None).double(),
        "support": labels.sum(0),
    }


def averaged_precision_recall_f1(
    scores: torch.Tensor, targets: torch.Tensor, thresholds: Thresholds, average: str
) -> dict[str, float]:
    """``average`` "macro" (mean of the per-class values) or "micro" (counts pooled over classes)."""
    labels = _check(scores, targets)
    preds, k = predict(scores, thresholds), scores.shape[1]
    return {
        "precision": float(multilabel_precision(preds, labels, k, average=average)),
        "recall": float(multilabel_recall(preds, labels, k, average=average)),
        "f1": float(multilabel_f1_score(preds, labels, k, average=average)),
    }


def subset_accuracy(scores: torch.Tensor, targets: torch.Tensor, thresholds: Thresholds = UNTUNED) -> float:
    """The fraction of images whose predicted label set is exactly the true one (exact match)."""
    labels = _check(scores, targets)
    return float(multilabel_exact_match(predict(scores, thresholds), labels, scores.shape[1]))


def hamming_loss(scores: torch.Tensor, targets: torch.Tensor, thresholds: Thresholds = UNTUNED) -> float:
    """The fraction of (image, class) pairs predicted wrong."""
    labels = _check(scores, targets)
    preds = predict(scores, thresholds)
    return float(multilabel_hamming_distance(preds, labels, scores.shape[1], average="micro"))


def tune_thresholds(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class thresholds that maximise each class's F1 on these scores, and that F1 ([K] each).

    Exact: every distinct score of a class is a candidate cut (predict >= it), and F1 = 2TP / (predicted +
    positives) is evaluated at all of them at once from cumulative counts over the scores sorted high to
    low. Cutting above the top score predicts nothing (F1 0), never better than a cut at a positive's score.
    Ties in F1 go to the higher threshold (fewer labels predicted for the same F1): F1 is a ratio of
    integers, so equal F1s are bit-equal in float64 and the first maximum in descending order is the
    highest cut. A class without positives keeps 0.5, its F1 there reported as 0 (``zero_division=0``).
    Tune on a validation split; thresholds tuned on the test split overstate its F1.
    """
    labels = _check(scores, targets)
    n, k = scores.shape
    if n == 0:
        return scores.new_full((k,), UNTUNED), torch.zeros(k, dtype=torch.float64)
    ordered, order = scores.sort(dim=0, descending=True, stable=True)
    true_pos = labels.gather(0, order).cumsum(0).double()  # [N, K]: positives among the top i+1 scores
    predicted = torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(1)
    positives = labels.sum(0).double()
    f1 = 2 * true_pos / (predicted + positives)
    # a cut at a score takes every score tied with it: only the last row of each tie run is a real cut
    last_of_tie = torch.ones_like(ordered, dtype=torch.bool)
    last_of_tie[:-1] = ordered[:-1] != ordered[1:]
    f1 = f1.masked_fill(~last_of_tie, -1.0)
    best_f1, best_row = f1.max(0)  # ties: the first maximum, i.e. the highest threshold
    thresholds = ordered.gather(0, best_row.unsqueeze(0)).squeeze(0)
    no_positives = positives == 0
    thresholds = thresholds.masked_fill(no_positives, UNTUNED)
    return thresholds, best_f1.masked_fill(no_positives, 0.0)


def _at(scores: torch.Tensor, targets: torch.Tensor, classes: list[str], thresholds: Thresholds) -> dict:
    """What the report gives at one set of thresholds."""
    per = precision_recall_f1(scores, targets, thresholds)
    return {
        "per_class": {
            name: {
                "precision": float(per["precision"][i]),
                "recall": float(per["recall"][i]),
                "f1": float(per["f1"][i]),
                "support": int(per["support"][i]),
            }
            for i, name in enumerate(classes)
        },
        "macro": averaged_precision_recall_f1(scores, targets, thresholds, "macro"),
        "micro": averaged_precision_recall_f1(scores, targets, thresholds, "micro"),
        "subset_accuracy": subset_accuracy(scores, targets, thresholds),
        "hamming_loss": hamming_loss(scores, targets, thresholds),
    }


def multilabel_report(
    scores: torch.Tensor,
    targets: torch.Tensor,
    classes: list[str],
    thresholds: Thresholds = UNTUNED,
) -> dict[str, Any]:
    """The multi-label counterpart of ``kiln.metrics.compute``: JSON-ready numbers at ``thresholds``
    (e.g. ``tune_thresholds`` on the validation split), and the same at 0.5 under ``"at_0.5"``."""
    _check(scores, targets)
    if len(classes) != scores.shape[1]:
        raise ValueError(f"{len(classes)} class names for scores of {scores.shape[1]} classes")
    cuts = torch.as_tensor(thresholds, dtype=torch.float64).expand(len(classes))
    ap = average_precision(scores, targets)
    report: dict[str, Any] = {"num_samples": int(scores.shape[0]), "classes": list(classes)}
    report.update(mean_average_precision(scores, targets))
    report.update(_at(scores, targets, classes, thresholds))
    for i, name in enumerate(classes):
        report["per_class"][name]["ap"] = None if ap[i].isnan() else float(ap[i])
    report["thresholds"] = {name: float(cuts[i]) for i, name in enumerate(classes)}
    report["at_0.5"] = _at(scores, targets, classes, UNTUNED)
    return report


def pr_curves(scores: torch.Tensor, targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(precision, recall) per class from the scores, the format ``kiln.metrics.plots.pr_curves`` draws.
    A class without positives gets recall 1 at every cut (torchmetrics' convention; its warning is silenced
    here, since the report already says that class's AP is undefined)."""
    labels = _check(scores, targets)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No positive samples found in target")
        precision, recall, _ = multilabel_precision_recall_curve(scores, labels, scores.shape[1])
    return list(zip(precision, recall, strict=True))
