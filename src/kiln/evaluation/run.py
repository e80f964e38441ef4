"""``evaluate_checkpoint``: rebuild model and data from a checkpoint, infer once, write the report.

A frozen-backbone run (the photos template's fixed feature extractor) evaluates on its cached features:
the backbone's output for the evaluated split was computed by training (val and test), so only the head
runs here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from kiln.config import AugmentConfig
from kiln.console import log, log_file
from kiln.data import load_split, plan
from kiln.data.augment import BatchTransform
from kiln.engine import features
from kiln.engine.evaluate import EvalOptions, infer
from kiln.engine.feature_plan import plan_features
from kiln.engine.loop import StepOptions
from kiln.engine.precision import autocast_factory, resolve_device, resolve_precision
from kiln.engine.setup import use_channels_last
from kiln.errors import ConfigError, KilnError
from kiln.evaluation import report
from kiln.evaluation.files import GALLERY, Explain, figures, write_mistakes, write_predictions
from kiln.metrics import Outputs
from kiln.models.restore import Restored, restore
from kiln.models.transfer import head_name
from kiln.paths import RunDir, output_dir


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
    feature_plan = plan_features(cfg, transform.photo)
    trained_frozen = (r.checkpoint.get("epoch") or 0) <= feature_plan.frozen_epochs  # the backbone as loaded
    if feature_plan.applies and trained_frozen:
        keys = features.feature_keys(model, precision, channels_last, r.preprocess)
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
            feature_plan.cache_dir,
        )
        with torch.no_grad():
            logits = model.get_submodule(head_name(model))(feats).float().cpu()
        return logits, loader.raw_labels.cpu(), torch.arange(len(logits)), loader
    loader.materialize()
    opts = EvalOptions(cfg.trainer.tta, channels_last, autocast)
    logits, labels, idx = infer(model, loader, transform, opts, desc=f"evaluating the {split} split:")
    return logits, labels, idx, loader


def transform_of(r: Restored) -> BatchTransform:
    """The checkpoint's evaluation transform: its geometry and normalisation."""
    return BatchTransform(
        list(r.preprocess.mean), list(r.preprocess.std), AugmentConfig(), 0, spec=r.preprocess.spec
    )


def explainer(r: Restored, transform: BatchTransform, device: torch.device) -> Explain | None:
    """Grad-CAM for the gallery's images (stored uint8, as the loader gives them), or None (with a line)
    for a model without a spatial feature map (an MLP)."""
    from kiln.models.gradcam import gradcam

    model = r.model.to(device)
    probe = torch.zeros((2, *r.preprocess.input_shape), device=device)  # a model input, normalised
    try:
        gradcam(model, probe)
    except (ConfigError, ValueError, RuntimeError) as e:
        log(f"kiln: no Grad-CAM overlays in the gallery ({str(e).splitlines()[0][:120]})")
        return None

    def explain(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return gradcam(model, transform.eval(images.to(device)), classes.to(device)).cpu()

    return explain


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
    if split == "test" and plan(r.config.data, spec=r.preprocess.spec).split("test") is None:
        log("kiln: the data has no test split; evaluating the val split")  # e.g. the tutorial's photos
        split = "val"
    out_path = output_dir(out_dir or RunDir.of_checkpoint(checkpoint).eval_dir(split), "--out")
    with log_file(out_path / "eval.log"):
        device = resolve_device(r.config.run.device)

        logits, labels, idx, loader = split_logits(r, split, device)
        thresholds = r.recipe.classes.thresholds  # multi-label: tuned on val when training ended
        out = Outputs(logits, labels, idx, r.classes, torch.tensor(thresholds) if thresholds else None)
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
        figs = figures(out, rep, loader, r.class_names, explainer(r, transform_of(r), device), mistakes)

        for name, png in figs.items():
            (out_path / name).write_bytes(png)
        rep["seconds"] = round(time.perf_counter() - t0, 3)
        rep["out_dir"], rep["report_html"] = str(out_path), str(out_path / "report.html")
        (out_path / "report.json").write_text(json.dumps(rep, indent=2))
        (out_path / "report.html").write_text(report.html(rep, figs))
    return rep
