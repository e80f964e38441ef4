"""Classification metrics from one inference pass (``Outputs``), via torchmetrics (the same numbers
scikit-learn gives; the tests check that), and their figures (``plots.py``). Per-class precision/recall/F1
for a class never predicted or never present are 0, as scikit-learn's ``zero_division=0``; macro and
weighted averages run over every class. Used by ``kiln eval`` and by the loggers at the end of training."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from kiln.metrics import builtin  # noqa: F401  (defining kiln's own metrics registers them)

ECE_BINS = 15


@dataclass(eq=False)
class Outputs:
    """What one inference pass over a split produced; its report and figures are computed once, on first
    use (TensorBoard and W&B both show them)."""

    logits: torch.Tensor  # [N, K] float32
    labels: torch.Tensor  # [N] int64
    indices: torch.Tensor  # [N] positions in the split (for ids and images)
    classes: list[str]

    @cached_property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(1)

    @cached_property
    def report(self) -> dict[str, Any]:
        return compute(self)

    @cached_property
    def figures(self) -> dict[str, bytes]:
        """The confusion matrix and the PR curves as PNG bytes."""
        from kiln.metrics import plots

        return {
            "confusion_matrix": plots.confusion_matrix(self.report["confusion_matrix"], list(self.classes)),
            "pr_curves": plots.pr_curves(pr_curves(self), self.report["average_precision"]),
        }


def compute(out: Outputs) -> dict[str, Any]:
    from torchmetrics.functional import classification as C

    k, probs, y = len(out.classes), out.probs, out.labels
    preds = probs.argmax(1)
    per = {
        "precision": C.multiclass_precision(preds, y, k, average=None),
        "recall": C.multiclass_recall(preds, y, k, average=None),
        "f1": C.multiclass_f1_score(preds, y, k, average=None),
    }
    support = torch.bincount(y, minlength=k).double()
    report: dict[str, Any] = {
        "num_samples": int(y.numel()),
        "classes": list(out.classes),
        "accuracy": float((preds == y).double().mean()),
        "loss": float(F.cross_entropy(out.logits, y)),
    }
    if k >= 5:
        report["top5_accuracy"] = float(C.multiclass_accuracy(probs, y, k, top_k=5, average="micro"))
    report["per_class"] = {
        name: {**{m: float(v[i]) for m, v in per.items()}, "support": int(support[i])}
        for i, name in enumerate(out.classes)
    }
    report["macro"] = {m: float(v.double().mean()) for m, v in per.items()}
    present = support > 0  # sklearn's balanced_accuracy_score: mean recall over the classes present
    report["balanced_accuracy"] = (
        float(per["recall"].double()[present].mean()) if bool(present.any()) else 0.0
    )
    report["weighted"] = {m: float((v.double() * support).sum() / support.sum()) for m, v in per.items()}
    report["confusion_matrix"] = C.multiclass_confusion_matrix(preds, y, k).tolist()  # rows: true class
    report["ece"] = float(C.multiclass_calibration_error(probs, y, k, n_bins=ECE_BINS, norm="l1"))
    ap = C.multiclass_average_precision(probs, y, k, average=None)
    report["average_precision"] = {name: float(ap[i]) for i, name in enumerate(out.classes)}
    return report


def pr_curves(out: Outputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One-vs-rest (precision, recall) per class from the softmax scores (not from argmax predictions)."""
    from torchmetrics.functional.classification import multiclass_precision_recall_curve

    precision, recall, _ = multiclass_precision_recall_curve(out.probs, out.labels, len(out.classes))
    return list(zip(precision, recall, strict=True))


def reliability(out: Outputs, bins: int = ECE_BINS) -> dict[str, torch.Tensor]:
    """Per confidence bin: mean confidence, accuracy and count (for the reliability diagram)."""
    conf, pred = out.probs.max(1)
    correct = (pred == out.labels).double()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    count = torch.bincount(which, minlength=bins).double()
    safe = count.clamp_min(1)
    return {
        "confidence": torch.bincount(which, conf.double(), minlength=bins) / safe,
        "accuracy": torch.bincount(which, correct, minlength=bins) / safe,
        "count": count,
    }
