"""What ``kiln eval`` writes besides report.json: predictions.csv (every image), mistakes.csv (every wrong
one, the worst first, with its file) and the figures, for single-label and multi-label models alike."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kiln.metrics import Outputs, plots, reliability

GALLERY = 16  # most confidently wrong images shown
Explain = Callable[
    [torch.Tensor, torch.Tensor], torch.Tensor
]  # stored uint8 images, classes -> heatmaps 0..1


def _single_predictions(path: Path, out: Outputs, ids: list[str], topk: int, names: list[str]) -> None:
    """predictions.csv: per image its id (file path), true and predicted class names, and the top-k."""
    probs = out.probs
    k = min(topk, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    with_ids = names != out.classes  # class names given: the ids in columns of their own
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "id",
                "true",
                "predicted",
                "confidence",
                *[f"top{j + 1}" for j in range(k)],
                *[f"top{j + 1}_prob" for j in range(k)],
                *(["true_id", "predicted_id"] if with_ids else []),
            ]
        )
        for r in range(len(out.labels)):
            top = [names[int(i)] for i in top_i[r]]
            true, pred = int(out.labels[r]), int(top_i[r, 0])
            w.writerow(
                [
                    ids[r],
                    names[true],
                    top[0],
                    f"{float(top_p[r, 0]):.6f}",
                    *top,
                    *[f"{float(p):.6f}" for p in top_p[r]],
                    *([out.classes[true], out.classes[pred]] if with_ids else []),
                ]
            )


def _single_mistakes(path: Path, out: Outputs, ids: list[str], names: list[str]) -> list[dict[str, Any]]:
    """mistakes.csv: every wrong prediction, most confident first, with its file (the gallery's rows);
    returns the rows."""
    conf, pred = out.probs.max(1)
    wrong = (pred != out.labels).nonzero().flatten()
    wrong = wrong[conf[wrong].argsort(descending=True)]
    rows = []
    for rank, i in enumerate(wrong.tolist(), start=1):
        true = int(out.labels[i])
        rows.append(
            {
                "rank": rank,
                "id": ids[i],
                "true": names[true],
                "predicted": names[int(pred[i])],
                "confidence": float(conf[i]),
                "true_class_prob": float(out.probs[i, true]),
            }
        )
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["rank", "id", "true", "predicted", "confidence", "true_class_prob"])
        w.writeheader()
        w.writerows(
            {
                **row,
                "confidence": f"{row['confidence']:.6f}",
                "true_class_prob": f"{row['true_class_prob']:.6f}",
            }
            for row in rows
        )
    return rows


def _single_figures(
    out: Outputs, rep: dict[str, Any], loader: Any, names: list[str], explain: Explain | None
) -> dict[str, bytes]:
    conf, pred = out.probs.max(1)
    wrong = (pred != out.labels).nonzero().flatten()
    worst = wrong[conf[wrong].argsort(descending=True)][:GALLERY]
    figs = {
        "confusion_matrix.png": plots.confusion_matrix(rep["confusion_matrix"], names),
        "per_class.png": plots.per_class_bars(
            {names[i]: rep["per_class"][c] for i, c in enumerate(out.classes)}
        ),
        "pr_curves.png": out.figures["pr_curves"],
        "reliability.png": plots.reliability_diagram(reliability(out), rep["ece"]),
    }
    if len(worst):
        titles = [
            f"true {names[int(out.labels[i])]}\npred {names[int(pred[i])]} {float(conf[i]):.2f}"
            for i in worst
        ]
        images = with_heatmaps(loader.images_at(out.indices[worst]), pred[worst], explain)
        figs["confident_mistakes.png"] = plots.gallery(
            images,
            titles,
            "Most confidently wrong (all in mistakes.csv)"
            + (", Grad-CAM of the predicted class" if explain else ""),
        )
    return figs


def with_heatmaps(images: torch.Tensor, classes: torch.Tensor, explain: Explain | None) -> torch.Tensor:
    """The gallery's images with a Grad-CAM overlay of ``classes`` each (as they are without ``explain``)."""
    if explain is None or not len(images):
        return images
    from kiln.models.gradcam import overlay

    heat = explain(images, classes)
    blended = [overlay(img.permute(1, 2, 0).numpy(), h.numpy()) for img, h in zip(images, heat, strict=True)]
    return torch.stack([torch.from_numpy(b).permute(2, 0, 1) for b in blended])


def _names(row: torch.Tensor, names: list[str]) -> str:
    return ";".join(names[int(k)] for k in row.nonzero().flatten())


def _multi_predictions(path: Path, out: Outputs, ids: list[str], names: list[str]) -> None:
    """Multi-label predictions.csv: true and predicted labels (above each class's threshold), every score."""
    predicted = out.probs >= out.report_thresholds()
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "true", "predicted", *[f"score_{n}" for n in names]])
        for r in range(len(out.labels)):
            w.writerow(
                [
                    ids[r],
                    _names(out.labels[r] > 0.5, names),
                    _names(predicted[r], names),
                    *[f"{float(p):.6f}" for p in out.probs[r]],
                ]
            )


def _multi_mistakes(path: Path, out: Outputs, ids: list[str], names: list[str]) -> list[dict[str, Any]]:
    """Multi-label mistakes.csv: every image with a wrong label, the most wrong labels first."""
    predicted, true = out.probs >= out.report_thresholds(), out.labels > 0.5
    missed, extra = true & ~predicted, predicted & ~true
    wrong = (missed | extra).sum(1)
    order = sorted((i for i in range(len(wrong)) if wrong[i]), key=lambda i: (-int(wrong[i]), i))
    rows = [
        {
            "rank": rank,
            "id": ids[i],
            "true": _names(true[i], names),
            "predicted": _names(predicted[i], names),
            "wrong_labels": int(wrong[i]),
            "missed": _names(missed[i], names),
            "extra": _names(extra[i], names),
            "position": i,
        }
        for rank, i in enumerate(order, start=1)
    ]
    with path.open("w", newline="") as f:
        columns = ["rank", "id", "true", "predicted", "wrong_labels", "missed", "extra"]
        w = csv.DictWriter(f, columns, extrasaction="ignore")  # "position": the row in the outputs
        w.writeheader()
        w.writerows(rows)
    return rows


def _multi_figures(
    out: Outputs,
    rep: dict[str, Any],
    loader: Any,
    names: list[str],
    explain: Explain | None,
    mistakes: list[dict[str, Any]],
) -> dict[str, bytes]:
    per_class = {names[i]: rep["per_class"][c] for i, c in enumerate(out.classes)}
    figs = {"per_class.png": plots.per_class_bars(per_class), "pr_curves.png": out.figures["pr_curves"]}
    if mistakes:
        at = torch.tensor([m["position"] for m in mistakes[:GALLERY]])
        titles = [f"missed {m['missed'] or '-'}\nextra {m['extra'] or '-'}" for m in mistakes[:GALLERY]]
        strongest = (out.probs[at] - (out.labels[at] > 0.5).double()).abs().argmax(1)  # the worst label
        images = with_heatmaps(loader.images_at(out.indices[at]), strongest, explain)
        figs["confident_mistakes.png"] = plots.gallery(
            images, titles, "Most wrong labels (all in mistakes.csv)"
        )
    return figs


def write_predictions(path: Path, out: Outputs, ids: list[str], topk: int, names: list[str]) -> None:
    if out.multi_label:
        _multi_predictions(path, out, ids, names)
    else:
        _single_predictions(path, out, ids, topk, names)


def write_mistakes(path: Path, out: Outputs, ids: list[str], names: list[str]) -> list[dict[str, Any]]:
    return (
        _multi_mistakes(path, out, ids, names) if out.multi_label else _single_mistakes(path, out, ids, names)
    )


def figures(
    out: Outputs,
    rep: dict[str, Any],
    loader: Any,
    names: list[str],
    explain: Explain | None = None,
    mistakes: list[dict[str, Any]] | None = None,
) -> dict[str, bytes]:
    if out.multi_label:
        return _multi_figures(out, rep, loader, names, explain, mistakes or [])
    return _single_figures(out, rep, loader, names, explain)
