"""``evaluate_checkpoint``: rebuild model and data from a checkpoint, infer once, write the report."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from kiln.console import log
from kiln.data import build, from_record, has_test_split
from kiln.engine.loop import EvalOptions, infer
from kiln.engine.precision import resolve_device
from kiln.errors import KilnError
from kiln.evaluation import report
from kiln.metrics import Outputs, plots, reliability
from kiln.models.restore import restore
from kiln.paths import RunDir, output_dir

GALLERY = 16  # most confidently wrong images shown


def write_predictions(path: Path, out: Outputs, ids: list[str], topk: int) -> None:
    probs = out.probs
    k = min(topk, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
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
            ]
        )
        for r in range(len(out.labels)):
            names = [out.classes[int(i)] for i in top_i[r]]
            w.writerow(
                [
                    ids[r],
                    out.classes[int(out.labels[r])],
                    names[0],
                    f"{float(top_p[r, 0]):.6f}",
                    *names,
                    *[f"{float(p):.6f}" for p in top_p[r]],
                ]
            )


def figures(out: Outputs, rep: dict[str, Any], loader: Any) -> dict[str, bytes]:
    conf, pred = out.probs.max(1)
    wrong = (pred != out.labels).nonzero().flatten()
    worst = wrong[conf[wrong].argsort(descending=True)][:GALLERY]
    figs = {
        "confusion_matrix.png": out.figures["confusion_matrix"],
        "per_class.png": plots.per_class_bars(rep["per_class"]),
        "pr_curves.png": out.figures["pr_curves"],
        "reliability.png": plots.reliability_diagram(reliability(out), rep["ece"]),
    }
    if len(worst):
        titles = [
            f"true {out.classes[int(out.labels[i])]}\npred {out.classes[int(pred[i])]} {float(conf[i]):.2f}"
            for i in worst
        ]
        figs["confident_mistakes.png"] = plots.gallery(
            loader.images_at(out.indices[worst]), titles, "Most confidently wrong"
        )
    return figs


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    config: str | Path | None = None,
    topk: int = 5,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    if out_dir:  # the user's folder is checked before anything is read; the default is in the run folder
        output_dir(out_dir, "--out")
    r = restore(checkpoint, overrides, config)
    if split == "test" and not has_test_split(r.config.data):  # e.g. train/ + val/, as the tutorial's photos
        log("kiln: the data has no test split; evaluating the val split")
        split = "val"
    out_path = output_dir(out_dir or RunDir.of_checkpoint(checkpoint).eval_dir(split), "--out")
    device = resolve_device(r.config.run.device)
    # only the split evaluated, normalised as the model was trained (not re-measured on today's data)
    spec, preset = from_record(r.preprocess)
    data = build(r.config.data, r.config.run.seed, device, splits=(split,), preset=preset, spec=spec)
    if data.classes != r.classes:
        raise KilnError(
            f"the data's classes {data.classes[:10]} differ from the checkpoint's {r.classes[:10]}"
        )
    loader = {"test": data.test, "val": data.val}[split]
    if loader is None:
        raise KilnError(f"--split {split}: the data has no {split} split")
    logits, labels, idx = infer(r.model.to(device), loader, data.transform, EvalOptions(r.config.trainer.tta))
    out = Outputs(logits, labels, idx, r.classes)
    rep = dict(out.report)
    rep.update({"checkpoint": str(checkpoint), "split": split, "tta": r.config.trainer.tta})
    ids = [loader.ids[int(i)] for i in idx] if loader.ids else [f"{split}[{int(i)}]" for i in idx]
    write_predictions(out_path / "predictions.csv", out, ids, topk)
    figs = figures(out, rep, loader)
    for name, png in figs.items():
        (out_path / name).write_bytes(png)
    rep["seconds"] = round(time.perf_counter() - t0, 3)
    (out_path / "report.json").write_text(json.dumps(rep, indent=2))
    (out_path / "report.html").write_text(report.html(rep, figs))
    return rep
