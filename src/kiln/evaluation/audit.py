"""``kiln audit``: near duplicates (leaks between splits first), likely label errors and outliers, found
from the backbone features of every split (``metrics/audit.py`` holds the rules and their sources).

The features are the frozen recipe's (``feature_plan.frozen_recipe``): the train images' evaluation view
and each held-out split's evaluation features, under the same cache keys a frozen ``kiln train`` of this
config uses. After such a run the audit reads them and runs no backbone at all; otherwise its one pass is
the frozen run's, and that run reads them back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kiln.config import Config
from kiln.console import Progress, log, log_file
from kiln.data.splits import FileSplit
from kiln.engine import head_solver
from kiln.engine.distributed import Dist
from kiln.engine.feature_plan import frozen_recipe
from kiln.engine.feeds import CachedFeatures
from kiln.engine.precision import resolve_device
from kiln.engine.setup import build_run, seed_everything
from kiln.engine.twins import split_grays
from kiln.errors import KilnError
from kiln.evaluation import audit_files
from kiln.metrics import audit as rules
from kiln.metrics import twins
from kiln.paths import RunDir, output_dir
from kiln.registry import import_user_modules

SPLITS = ("train", "val", "test")
FOLDS = 5  # the label check's k
WEAK_HEAD = 0.9  # out-of-fold accuracy under which the label check says its flags are mostly hard images
AUDIT_C = 0.1  # the label check's inverse L2 strength (scikit-learn's C)


@dataclass
class SplitView:
    """One split as the audit sees it: unit features, labels, the paths the source lists and its loader
    (for thumbnails)."""

    name: str
    features: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    loader: Any


def audit_config(cfg: Config) -> Config:
    """The frozen recipe with nothing that would stop its feature path: pair mixing and per-batch CIFAR
    augmentation change only training, never the evaluation view the audit reads."""
    cfg = frozen_recipe(cfg)
    none = {"mixup": 0.0, "cutmix": 0.0, "crop_padding": 0, "cutout": 0, "alternating_flip": False}
    augment = cfg.data.augment.model_copy(update=none)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"augment": augment})})


def split_views(feed: CachedFeatures) -> list[SplitView]:
    """Every split's evaluation-view features: from the cache, else one pass each."""
    views = []
    for name in SPLITS:
        loader = feed.data.loader(name)
        if loader is None:
            continue
        feats = feed.centre_features() if name == "train" else feed.split_features(name)
        assert feats is not None
        ids = list(loader.ids) if loader.ids else [f"{name}[{i}]" for i in range(loader.order.n)]
        views.append(SplitView(name, rules.unit(feats).cpu(), loader.raw_labels.cpu(), ids, loader))
    return views


def near_twins(feed: CachedFeatures, views: list[SplitView]) -> list[twins.Pair]:
    """Every pair of near twins (``twins.Twins``), or none for images under ``twins.MIN_TWIN_SIDE`` px:
    an 8 px digit has too few pixels to tell a copy from another drawing of it (9,581 "leaks")."""
    side = min(feed.data.spec.size)
    if side < twins.MIN_TWIN_SIDE:
        log(f"kiln: near twins not searched: the images are {side} px, too few pixels to tell copies apart")
        return []
    return twins.Twins(
        {v.name: v.features for v in views},
        lambda split: split_grays(feed.data, split, feed.keys, feed.plan.cache_dir),
    ).all_pairs()


def out_of_fold_probabilities(
    features: torch.Tensor, labels: torch.Tensor, progress: Progress, seed: int
) -> torch.Tensor:
    """Each image's class probabilities [N, K] from a linear head fitted on the other folds, so that it
    never saw the image's own label: a plain logistic regression (standardised features, scikit-learn's
    C = ``AUDIT_C`` as an L2 strength of 1 / (C x images) on the mean loss; softmax cross-entropy, or one
    sigmoid per class for multi-label), solved by the frozen head's full-batch L-BFGS (``head_solver.fit``:
    ~0.1 s a fold where scikit-learn's lbfgs took ~1.5 s on 2 cores)."""
    multi = labels.dim() == 2
    width = labels.shape[1] if multi else int(labels.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    fold = torch.randperm(len(labels), generator=generator) % FOLDS
    if not multi:  # stratified: each class spread over the folds
        fold = torch.empty(len(labels), dtype=torch.long)
        for label in labels.unique():
            mine = torch.nonzero(labels == label).flatten()
            fold[mine[torch.randperm(len(mine), generator=generator)]] = torch.arange(len(mine)) % FOLDS
    probs = torch.zeros((len(labels), width))
    loss = F.binary_cross_entropy_with_logits if multi else F.cross_entropy
    for k in range(FOLDS):
        held, fit = fold == k, fold != k
        if not held.any() or not fit.any():
            continue
        mean, std = features[fit].mean(0), features[fit].std(0).clamp(min=1e-6)
        head = torch.nn.Linear(features.shape[1], width)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        target = labels[fit].float() if multi else labels[fit]
        head_solver.fit(head, (features[fit] - mean) / std, target, loss, 1 / (AUDIT_C * int(fit.sum())))
        with torch.no_grad():
            logits = head((features[held] - mean) / std)
        probs[held] = logits.sigmoid() if multi else logits.softmax(1)
        progress.update(1)
    return probs


def label_verdict(views: list[SplitView], seed: int) -> rules.LabelIssues:
    """Confident learning over every labelled image of every split, on out-of-fold probabilities."""
    feats = torch.cat([v.features for v in views])
    labels = torch.cat([v.labels for v in views])
    with Progress(
        f"label check: {FOLDS}-fold linear heads on {len(feats):,} images", FOLDS, "fold"
    ) as progress:
        probs = out_of_fold_probabilities(feats, labels, progress, seed)
    if labels.dim() == 1:  # the head's own accuracy: what the flags are worth
        agree = float((probs.argmax(1) == labels).float().mean())
        weak = agree < WEAK_HEAD
        note = "; a weak head: its flags are mostly hard images, not wrong labels" if weak else ""
        log(f"kiln: label check: the out-of-fold heads agree with {agree:.1%} of the labels{note}")
    return rules.confident_issues(probs, labels)


def audit(cfg: Config, out: str | Path | None = None, config_path: str | None = None) -> dict[str, Any]:
    """Audit the data ``cfg`` describes; writes audit.html, duplicates.csv, label_issues.csv,
    outliers.csv and audit.json into ``out`` (default ``<run dir>/audit``) and returns audit.json's dict."""
    if not cfg.model.pretrained:
        raise KilnError(
            "kiln audit: model.pretrained is not set, and an untrained backbone's features say nothing about "
            "the images; name weights (model.pretrained=true or a file) or a trained run (--checkpoint "
            "runs/NAME/checkpoints/best.pt)"
        )
    out_path = output_dir(out or RunDir(cfg.run_dir).root / "audit", "--out")
    import_user_modules(cfg.imports)
    seed_everything(cfg.run.seed, cfg.run.deterministic, cfg.run.threads)
    device = resolve_device(cfg.run.device)
    with log_file(out_path / "audit.log"):
        t0 = time.perf_counter()
        run = build_run(audit_config(cfg), Dist(), device, [])  # every check of `kiln train` first
        feed = run.feed
        if not isinstance(feed, CachedFeatures):
            raise KilnError(f"kiln audit needs the frozen backbone's features; {run.features.describe()}")
        views = split_views(feed)
        t_features = time.perf_counter() - t0
        t1 = time.perf_counter()
        pairs = near_twins(feed, views)
        issues = label_verdict(views, cfg.run.seed)
        train = views[0].features
        scores = [rules.outlier_scores(v.features, train, same=v.name == "train") for v in views]
        cut = rules.outlier_cut(scores[0])
        t_findings = time.perf_counter() - t1
        summary = audit_files.write(
            out_path,
            views,
            pairs,
            issues,
            scores,
            cut,
            run.data.class_names,
            config_path,
            isinstance(run.data.plan.splits.train, FileSplit),
        )
        summary.update(
            {
                "model": cfg.model.name,
                "features_seconds": round(t_features, 2),
                "findings_seconds": round(t_findings, 2),
                "seconds": round(time.perf_counter() - t0, 2),
                "out_dir": str(out_path),
            }
        )
        (out_path / "audit.json").write_text(json.dumps(summary, indent=1))
        log(
            f"kiln: audit done in {summary['seconds']:.1f} s (features {t_features:.1f} s, findings "
            f"{t_findings:.1f} s)"
        )
    return summary
