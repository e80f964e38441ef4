"""kiln's own validation metrics, registered by name: usable in ``trainer.metrics`` and, as ``val_<name>``,
as ``trainer.checkpoint.monitor`` / early-stopping monitors (a monitored one is computed without being
listed). Each is ``fn(logits, labels) -> float`` over a whole split; a user's own metric has the same form.

On skewed classes accuracy hides the small ones: ``balanced_accuracy`` (mean recall per class) and
``macro_f1`` (mean F1 per class) weigh every class alike. Both equal scikit-learn's (tested): classes are
those present in the labels (balanced accuracy) or in the labels or predictions (macro F1).

Multi-label labels ([N, K] 0/1): ``map`` is the mean average precision over the classes with a positive,
``macro_f1`` the mean per-class F1 and ``balanced_accuracy`` the mean per-class (TPR + TNR) / 2, both with
each sigmoid thresholded at 0.5 (the tuned thresholds come after training); ``top5`` is not defined (NaN).
"""

from __future__ import annotations

import torch

from kiln.registry import register_metric


def _present(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.unique(torch.cat([t.flatten() for t in tensors]))


@register_metric("top5")
def top5(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose class is among the 5 highest scores (all of them with 5 classes or fewer)."""
    if labels.ndim == 2:
        return float("nan")
    k = min(5, logits.shape[1])
    return float((logits.topk(k, 1).indices == labels[:, None]).any(1).double().mean())


@register_metric("balanced_accuracy")
def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean recall over the classes present in ``labels`` (sklearn's balanced_accuracy_score)."""
    if labels.ndim == 2:
        pred, true = logits > 0, labels > 0.5
        tpr = (pred & true).sum(0) / true.sum(0).clamp_min(1)
        tnr = (~pred & ~true).sum(0) / (~true).sum(0).clamp_min(1)
        return float(((tpr + tnr) / 2).double().mean())
    pred = logits.argmax(1)
    recalls = [(pred[labels == c] == c).double().mean() for c in _present(labels)]
    return float(torch.stack(recalls).mean()) if recalls else float("nan")


@register_metric("macro_f1")
def macro_f1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean F1 over the classes present in the labels or the predictions (sklearn's f1_score, macro)."""
    if labels.ndim == 2:
        from kiln.metrics.multilabel import averaged_precision_recall_f1

        return float(averaged_precision_recall_f1(logits.sigmoid(), labels, 0.5, "macro")["f1"])
    pred = logits.argmax(1)
    scores = []
    for c in _present(labels, pred):
        tp = float(((pred == c) & (labels == c)).sum())
        predicted, actual = float((pred == c).sum()), float((labels == c).sum())
        scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / len(scores) if scores else float("nan")


@register_metric("map")
def mean_average_precision(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the average precision of one class against the rest, from the softmax scores
    (sklearn's average_precision_score per class, averaged over classes with at least one image)."""
    from torchmetrics.functional.classification import multiclass_average_precision

    if labels.ndim == 2:
        from kiln.metrics.multilabel import mean_average_precision as multilabel_map

        value = multilabel_map(logits.sigmoid(), labels)["map_macro"]
        return float("nan") if value is None else float(value)
    present = torch.bincount(labels, minlength=logits.shape[1]) > 0
    ap = multiclass_average_precision(logits.softmax(1), labels, logits.shape[1], average=None)
    return float(ap[present].mean()) if bool(present.any()) else float("nan")
