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
    labels: torch.Tensor  # [N] int64, or (multi-label) [N, K] 0/1
    indices: torch.Tensor  # [N] positions in the split (for ids and images)
    classes: list[str]
    thresholds: torch.Tensor | None = None  # multi-label: per class, a label is predicted at score >= it

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    @cached_property
    def probs(self) -> torch.Tensor:
        """Softmax over the classes, or (multi-label) each class's sigmoid."""
        return self.logits.sigmoid() if self.multi_label else self.logits.softmax(1)

    def report_thresholds(self) -> torch.Tensor:
        """Multi-label: each class's threshold (0.5 where none was tuned), [K] for comparing with probs."""
        cuts = self.thresholds if self.thresholds is not None else torch.full((len(self.classes),), 0.5)
        return cuts.to(self.probs.dtype)

    def positives(self, k: int) -> torch.Tensor:
        """Which images belong to class ``k`` (for one-vs-rest curves)."""
        return self.labels[:, k] > 0.5 if self.multi_label else self.labels == k

    @cached_property
    def report(self) -> dict[str, Any]:
        if not self.multi_label:
            return compute(self)
        from kiln.metrics.multilabel import multilabel_report

        cuts = self.thresholds if self.thresholds is not None else 0.5
        report = multilabel_report(self.probs, self.labels, list(self.classes), cuts)
        report["average_precision"] = {c: m["ap"] for c, m in report["per_class"].items()}
        report["loss"] = float(F.binary_cross_entropy_with_logits(self.logits, self.labels.float()))
        return report

    @cached_property
    def figures(self) -> dict[str, bytes]:
        """The confusion matrix (single-label) and the PR curves as PNG bytes."""
        from kiln.metrics import plots

        curves = plots.pr_curves(pr_curves(self), self.report["average_precision"])
        if self.multi_label:
            return {"pr_curves": curves}
        matrix = plots.confusion_matrix(self.report["confusion_matrix"], list(self.classes))
        return {"confusion_matrix": matrix, "pr_curves": curves}


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
    """One-vs-rest (precision, recall) per class from the softmax scores (not from argmax predictions);
    multi-label: each class's own curve from its sigmoid."""
    if out.multi_label:
        from kiln.metrics.multilabel import pr_curves as multilabel_curves

        return multilabel_curves(out.probs, out.labels)
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
