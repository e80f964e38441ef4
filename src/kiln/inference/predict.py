"""``kiln predict``: run a checkpoint or any kiln export on image files with the recorded preprocessing,
and print the results as JSON or CSV (``format_results``, which ``kiln predict --url`` shares).

Unreadable files are reported one by one (stderr and the output) and the rest still run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from kiln.console import warn as console_warn
from kiln.data.sources import IMAGE_EXTENSIONS
from kiln.errors import BRIEF, KilnError, clip
from kiln.export.base import Loaded
from kiln.inference.explain import Explainer
from kiln.inference.loading import load_any
from kiln.inference.runtime import Classifier, answers

__all__ = ["Loaded", "failure_summary", "format_results", "image_files", "load_any", "predict"]


T = TypeVar("T")


def _visible(f: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in f.relative_to(root).parts)


def no_images(folder: Path, others: list[Path]) -> str:
    """Why a folder gave nothing: the extensions looked for, and what else it holds."""
    looked = ", ".join(sorted(IMAGE_EXTENSIONS))
    kinds = sorted({f.suffix.lower() or "no extension" for f in others})
    held = f"; it holds {len(others)} other file(s): {', '.join(kinds[:5])}" if others else "; it is empty"
    return f"{folder}: no image files in it or below (looked for {looked}){held}"


def image_files(args: list[str]) -> Iterator[tuple[Path, str | None]]:
    """(file, None) for each file named on the command line and each image file in a folder (walked,
    sorted, hidden names skipped), or (path, why) for an input that gives no image: a missing or empty
    file, a folder without image files."""
    for a in args:
        p = Path(a)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and _visible(f, p))
            images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
            if not images:
                yield p, no_images(p, files)
            yield from ((f, None) for f in images)
        elif not p.is_file():
            yield p, f"{p}: no such file"
        elif p.stat().st_size == 0:
            yield p, f"{p}: empty file (0 bytes)"
        else:
            yield p, None


def failure_summary(results: list[dict[str, Any]]) -> str:
    """The one line for a run where no image could be read: the first failures, each naming its input."""
    errors = [r["error"] for r in results if "error" in r]
    shown = "; ".join(clip(e, 2 * BRIEF) for e in errors[:2]) + (
        "; ... (all of them above)" if len(errors) > 2 else ""
    )
    return f"no image could be read ({len(errors)} input(s) failed: {shown})"


def predict(
    classifier: Classifier | Loaded,
    inputs: list[str],
    topk: int = 5,
    batch_size: int | None = None,
    warn: Callable[[str], None] | None = None,
    explainer: Explainer | None = None,
) -> list[dict[str, Any]]:
    """One result per file, in input order: {"path", "top": [{"class", "prob"}]} (multi-label models add
    "labels": [{"class", "score"}]) or {"path", "error"}. ``batch_size`` None: training's evaluation batch
    rule (small batches of photos on a CPU). ``explainer``: Grad-CAM overlays of each batch, "overlays"."""
    clf = classifier if isinstance(classifier, Classifier) else Classifier(classifier)
    batch_size = batch_size or clf.batch_size  # images per forward pass

    def run(batch: list[tuple[int, np.ndarray]], results: list[dict[str, Any]]) -> None:
        images = np.stack([image for _, image in batch])
        logits = clf.logits(images, batch_size)
        for answer, (i, _) in zip(answers(clf.class_list, logits, topk), batch, strict=True):
            results[i].update(answer)
        if explainer is not None:
            paths = [Path(results[i]["path"]) for i, _ in batch]
            for overlays, (i, _) in zip(explainer.explain(paths, images, logits), batch, strict=True):
                results[i]["overlays"] = [str(p) for p in overlays]

    return in_batches(inputs, clf.decode, batch_size, run, warn or console_warn)


def in_batches(
    inputs: list[str],
    read: Callable[[Path], T],
    size: int,
    run: Callable[[list[tuple[int, T]], list[dict[str, Any]]], None],
    warn: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One result per input file, in input order (``image_files``): each file read by ``read`` (a
    KilnError fails that file alone, the others still run), batches of ``size`` given to ``run(batch,
    results)`` as (result index, what ``read`` gave)."""
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, T]] = []
    for f, why in image_files(inputs):
        results.append({"path": str(f)})
        if why is None:
            try:
                pending.append((len(results) - 1, read(f)))
            except KilnError as e:  # naming the file: reported, the other images still run
                why = str(e)
        if why:
            results[-1]["error"] = why
            warn(why)
        elif len(pending) >= size:
            run(pending, results)
            pending = []
    if pending:
        run(pending, results)
    return results


def _labels_cell(labels: list[dict[str, Any]]) -> str:
    """A multi-label row's labels as one CSV cell: "name:0.912345;name:0.700000"."""
    return ";".join(f"{label['class']}:{label['score']:.6f}" for label in labels)


def format_results(results: list[dict[str, Any]], fmt: str, topk: int) -> str:
    """JSON (the results as they are) or CSV: path, top-k (class, prob; the id beside a display name that
    differs from it), labels (multi-label: "name:score;..."), error."""
    if fmt == "json":
        return json.dumps(results, indent=2)
    import csv
    import io

    k = max([len(r.get("top", [])) for r in results] + [min(topk, 1)])
    with_ids = any("id" in t for r in results for t in r.get("top", []))
    with_labels = any("labels" in r for r in results)
    per_class = ["", "_id", "_prob"] if with_ids else ["", "_prob"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [f"top{j}{suffix}" for j in range(1, k + 1) for suffix in per_class]
    writer.writerow(["path", *header, *(["labels"] if with_labels else []), "error"])
    for r in results:
        cells = []
        for t in r.get("top", []):
            cells += [t["class"], *([t.get("id", t["class"])] if with_ids else []), f"{t['prob']:.6f}"]
        cells += [""] * (len(header) - len(cells))
        labels = [_labels_cell(r["labels"]) if "labels" in r else ""] if with_labels else []
        writer.writerow([r["path"], *cells, *labels, r.get("error", "")])
    return buf.getvalue().rstrip("\n")
