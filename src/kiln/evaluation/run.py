"""``evaluate_checkpoint``: rebuild model and data from a checkpoint, infer once, write the report.

A frozen-backbone run (the photos template's fixed feature extractor) evaluates on its cached features:
the backbone's output for the evaluated split was computed by training (val and test), so only the head
runs here.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import torch

from kiln.console import log, log_file
from kiln.data import load_split, plan
from kiln.engine import features
from kiln.engine.loop import EvalOptions, StepOptions, infer
from kiln.engine.precision import autocast_factory, resolve_device, resolve_precision
from kiln.engine.setup import use_channels_last
from kiln.errors import KilnError
from kiln.evaluation import report
from kiln.metrics import Outputs, plots, reliability
from kiln.models.restore import Restored, restore
from kiln.models.transfer import head_name
from kiln.paths import RunDir

GALLERY = 16  # most confidently wrong images shown


def write_predictions(path: Path, out: Outputs, ids: list[str], topk: int, names: list[str]) -> None:
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


def write_mistakes(path: Path, out: Outputs, ids: list[str], names: list[str]) -> list[dict[str, Any]]:
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


def figures(out: Outputs, rep: dict[str, Any], loader: Any, names: list[str]) -> dict[str, bytes]:
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
        figs["confident_mistakes.png"] = plots.gallery(
            loader.images_at(out.indices[worst]), titles, "Most confidently wrong (all in mistakes.csv)"
        )
    return figs


def split_logits(
    r: Restored, split: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Logits, labels and sample indices of a split, and its loader. A frozen-backbone run reads the
    backbone's features of the split from the cache (training computed them) and runs only the head."""
    cfg = r.config
    data_plan = plan(cfg.data, spec=r.preprocess.spec)
    if data_plan.classes != r.classes:
        raise KilnError(
            f"the data's classes {data_plan.classes[:10]} differ from the checkpoint's {r.classes[:10]}"
        )
    loader, transform = load_split(data_plan, cfg.data, split, device, r.preprocess)
    if loader is None:
        raise KilnError(f"--split {split}: the data has no {split} split")
    model = r.model.to(device)
    precision = resolve_precision(cfg.trainer.precision, device)
    channels_last = use_channels_last(cfg.trainer.channels_last, model, device)
    autocast = autocast_factory(precision, device)
    frozen, _ = features.feature_path(cfg, transform.photo, distributed=False)
    if frozen and cfg.trainer.unfreeze is None:
        head = head_name(model)
        keys = features.FeatureKeys(
            features.digest(model, head), features.numerics(precision, channels_last, r.preprocess)
        )
        source = data_plan.split(split)
        content = source.content_key(r.preprocess.spec, False) if source is not None else None
        feats = features.eval_features(
            model,
            loader,
            transform,
            keys,
            content,
            split,
            cfg.trainer.tta,
            StepOptions(channels_last=channels_last, autocast=autocast),
            loader.order.batch_size,
            Path(cfg.data.cache_dir).expanduser(),
        )
        with torch.no_grad():
            logits = model.get_submodule(head)(feats).float().cpu()
        return logits, loader.raw_labels.cpu(), torch.arange(len(logits)), loader
    loader.materialize()
    opts = EvalOptions(cfg.trainer.tta, channels_last, autocast)
    logits, labels, idx = infer(model, loader, transform, opts, desc=f"evaluating the {split} split:")
    return logits, labels, idx, loader


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    config: str | Path | None = None,
    topk: int = 5,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = restore(checkpoint, overrides, config)
    out_path = Path(out_dir) if out_dir else RunDir.of_checkpoint(checkpoint).eval_dir(split)
    out_path.mkdir(parents=True, exist_ok=True)
    with log_file(out_path / "eval.log"):
        if split == "test" and plan(r.config.data, spec=r.preprocess.spec).split("test") is None:
            log("kiln: the data has no test split; evaluating the val split")  # e.g. the tutorial's photos
            split = "val"
        device = resolve_device(r.config.run.device)
        logits, labels, idx, loader = split_logits(r, split, device)
        out = Outputs(logits, labels, idx, r.classes)
        rep = dict(out.report)
        saved = r.checkpoint
        rep.update(
            {
                "checkpoint": str(checkpoint),
                "split": split,
                "tta": r.config.trainer.tta,
                "epoch": saved.get("epoch"),
                "step": saved.get("step"),
                "best_metric": saved.get("best_metric"),
                "monitor": r.config.trainer.checkpoint.monitor,
                "model": r.config.model.name,
                "class_names": r.class_names,
                "config": r.config.to_dict(),
                "train_counts": saved.get("train_counts"),
            }
        )
        ids = [loader.ids[int(i)] for i in idx] if loader.ids else [f"{split}[{int(i)}]" for i in idx]
        write_predictions(out_path / "predictions.csv", out, ids, topk, r.class_names)
        mistakes = write_mistakes(out_path / "mistakes.csv", out, ids, r.class_names)
        rep["mistakes"], rep["mistakes_total"] = mistakes[:GALLERY], len(mistakes)
        figs = figures(out, rep, loader, r.class_names)
        for name, png in figs.items():
            (out_path / name).write_bytes(png)
        rep["seconds"] = round(time.perf_counter() - t0, 3)
        rep["out_dir"], rep["report_html"] = str(out_path), str(out_path / "report.html")
        (out_path / "report.json").write_text(json.dumps(rep, indent=2))
        (out_path / "report.html").write_text(report.html(rep, figs))
    return rep
