"""Figures for the evaluation report (matplotlib, Agg backend: no display needed). Each function returns
PNG bytes, so the same figure can be written to disk, embedded in HTML or sent to TensorBoard/W&B."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _png(draw: Callable[[], Any], size: tuple[float, float]) -> bytes:
    fig = plt.figure(figsize=size, dpi=110)
    try:
        draw()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _side(k: int) -> float:
    return min(4 + 0.45 * k, 16)  # inches: readable cells up to ~30 classes


def confusion_matrix(cm: list[list[int]], classes: list[str]) -> bytes:
    """Counts (left) and row-normalised recall per cell (right); rows are the true class."""
    counts = np.asarray(cm, dtype=float)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k, show_text = len(classes), len(classes) <= 20

    def draw() -> None:
        for j, (mat, title, fmt) in enumerate(
            ((counts, "counts", "{:.0f}"), (norm, "row-normalised", "{:.2f}"))
        ):
            ax = plt.subplot(1, 2, j + 1)
            ax.imshow(mat, cmap="Blues", vmin=0)
            ax.set(
                title=f"Confusion matrix ({title})",
                xlabel="predicted",
                ylabel="true",
                xticks=range(k),
                yticks=range(k),
            )
            ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
            ax.set_yticklabels(classes, fontsize=8)
            if show_text:
                hi = mat.max() / 2 if mat.max() else 1
                for r in range(k):
                    for c in range(k):
                        ax.text(
                            c,
                            r,
                            fmt.format(mat[r, c]),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if mat[r, c] > hi else "black",
                        )

    return _png(draw, (2 * _side(k), _side(k)))


def per_class_bars(per_class: dict[str, dict[str, float]]) -> bytes:
    names = list(per_class)
    x = np.arange(len(names))

    def draw() -> None:
        ax = plt.gca()
        for i, m in enumerate(("precision", "recall", "f1")):
            ax.bar(x + (i - 1) * 0.27, [per_class[n][m] for n in names], 0.27, label=m)
        ax.set(
            ylim=(0, 1.18), title="Per-class precision, recall and F1", xticks=x, yticks=np.linspace(0, 1, 6)
        )
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.legend(loc="upper center", ncol=3, fontsize=8)  # above the bars, never over them
        ax.grid(axis="y", alpha=0.3)

    return _png(draw, (max(6, 0.5 * len(names) + 2), 4.5))


def pr_curves(curves: list[tuple[torch.Tensor, torch.Tensor]], ap: dict[str, float]) -> bytes:
    """One-vs-rest precision-recall curves from softmax scores, AP per class in the legend."""

    def draw() -> None:
        ax = plt.gca()
        cmap = plt.get_cmap("tab20")
        for i, ((precision, recall), (name, a)) in enumerate(zip(curves, ap.items(), strict=True)):
            ax.step(
                recall.numpy(),
                precision.numpy(),
                where="post",
                color=cmap(i % 20),
                lw=1.2,
                label=f"{name} (AP {a:.3f})" if a is not None else f"{name} (AP n/a: no positives)",
            )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.02),
            xlabel="recall",
            ylabel="precision",
            title="Precision-recall, one class vs rest",
        )
        ax.legend(fontsize=7, loc="lower left", ncol=1 if len(ap) <= 12 else 2)
        ax.grid(alpha=0.3)

    return _png(draw, (7, 6))


def reliability_diagram(rel: dict[str, torch.Tensor], ece: float) -> bytes:
    """Accuracy per confidence bin against the diagonal, each bar labelled with its image count, and the
    counts below: a bin of 2 images is not drawn as if it were as sure as one of 2,000."""
    bins = len(rel["count"])
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = rel["count"].numpy()
    filled = counts > 0

    def draw() -> None:
        top = plt.subplot2grid((4, 1), (0, 0), rowspan=3)
        bars = top.bar(
            centres[filled],
            rel["accuracy"].numpy()[filled],
            width=1 / bins,
            edgecolor="k",
            alpha=0.8,
            label="accuracy",
        )
        for bar, n in zip(bars, counts[filled], strict=True):
            top.annotate(
                f"{int(n):,}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 1),
                textcoords="offset points",
            )
        top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        top.plot(
            rel["confidence"].numpy()[filled],
            rel["accuracy"].numpy()[filled],
            "o-",
            color="C3",
            ms=3,
            label="mean confidence vs accuracy",
        )
        top.set(
            xlim=(0, 1),
            ylim=(0, 1.08),
            ylabel="accuracy",
            title=f"Reliability diagram (ECE {ece:.4f}, {bins} bins; images per bin on each bar)",
        )
        top.legend(loc="upper left", fontsize=8)
        bottom = plt.subplot2grid((4, 1), (3, 0), sharex=top)
        bottom.bar(centres, counts, width=1 / bins, color="gray", edgecolor="k")
        bottom.set(
            xlabel="confidence",
            ylabel="images",
            yscale="log" if counts.max() > 50 * max(counts.min(), 1) else "linear",
        )

    return _png(draw, (6, 6.5))


def gallery(images: torch.Tensor, titles: list[str], title: str) -> bytes:
    """A grid of uint8 [N, C, H, W] images with a caption each (e.g. 'true: cat / pred: dog 0.98')."""
    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, -(-n // cols))

    def draw() -> None:
        plt.suptitle(title)
        for i in range(n):
            ax = plt.subplot(rows, cols, i + 1)
            img = images[i].permute(1, 2, 0).numpy()
            ax.imshow(
                img.squeeze(-1) if img.shape[-1] == 1 else img,
                cmap="gray" if img.shape[-1] == 1 else None,
                interpolation="nearest",
            )
            ax.set_title(titles[i], fontsize=7)
            ax.axis("off")

    return _png(draw, (1.6 * cols, 1.9 * rows + 0.5))
