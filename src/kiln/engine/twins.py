"""Near twins between the splits of a run, from what training already holds: the cached features and the
decoded images. ``kiln train`` warns when val images have a twin in train (the val score is then
inflated); ``kiln audit`` finds every pair (``metrics/twins.py`` holds the rule)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from kiln.console import Progress, log
from kiln.data import geometry
from kiln.data.build import TrainData
from kiln.engine.features import FeatureKeys, cached_features
from kiln.metrics import twins as rules
from kiln.metrics.audit import nearest, unit


@torch.no_grad()
def gray_views(data: TrainData, split: str, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``rules.gray_views`` of stored images ``x`` (positions ``idx`` of ``split``) in the evaluation's
    view, as the features saw them: cut from the stored images on one channel (the prints ignore the
    normalisation), at half resolution (the prints are 48 px, the view 224)."""
    transform = data.transform
    gray = x.float().mean(1, keepdim=True)
    if split == "train" and transform.photo:  # stored as training keeps them: the view is cut from that
        boxes = transform.centre_boxes(transform.extents[idx.cpu()]) / 2
        size = (transform.spec.size[0] // 2, transform.spec.size[1] // 2)
        gray = geometry.resample(F.avg_pool2d(gray, 2), boxes.to(gray.device), size)
    else:
        gray = F.avg_pool2d(transform.eval_view(gray), 2)
    return rules.gray_views(gray).cpu()


def split_grays(data: TrainData, split: str, keys: FeatureKeys, cache_dir: Path | None) -> torch.Tensor:
    """Every image of ``split``'s gray view, in order: from the cache beside the split's features, else
    computed from its images (decoded once: the decode cache holds them) and kept there (9 kB an image:
    on imagenette's 9,469 train photos 18 s to compute, under a second to read)."""
    loader = data.loader(split)
    assert loader is not None
    key = keys.key(data.content_key(split), {"split": split, "view": "gray", "side": rules.GRAY_SIDE})

    def compute(names: Sequence[str]) -> dict[str, torch.Tensor]:
        loader.materialize()
        out = []
        desc = f"pixel prints of {loader.order.n:,} {split} images"
        with Progress(desc, loader.order.n, announce=False) as progress:
            for x, idx in loader.in_order(256):
                out.append(gray_views(data, split, x, idx))
                progress.update(len(idx))
        return {"gray": torch.cat(out)}

    found = cached_features(cache_dir, {"gray": key}, compute, f"{split} pixel prints", torch.device("cpu"))
    return found["gray"].to(torch.uint8)


def warn_of_leaks(data: TrainData, train: torch.Tensor, held: dict[str, torch.Tensor]) -> None:
    """One line when images of a held-out split ({name: features}) have a near twin in train: each one's
    nearest train image by features, confirmed by pixel prints (``rules.Twins``'s score). A lower bound
    (the audit also searches by pixels): no pass over the images beyond those pairs."""
    if min(data.spec.size) < rules.MIN_TWIN_SIDE:
        return
    train_unit = unit(train).cpu()
    for split, feats in held.items():
        loader = data.loader(split)
        if loader is None or not len(feats):
            continue
        sims, partner = nearest(unit(feats).cpu(), train_unit, 1)
        rows = torch.nonzero(sims[:, 0] >= rules.CANDIDATE_FEATURES).flatten()
        if not len(rows):
            continue
        partners = partner[rows, 0]
        mine = gray_views(data, split, loader.images_at(rows).to(loader.device), rows)
        theirs = gray_views(data, "train", data.train.images_at(partners).to(data.train.device), partners)
        score = rules.twin_score(mine, theirs, sims[rows, 0])
        twins = int((score >= rules.TWIN_SCORE).sum())
        if twins:
            log(
                f"kiln: warning: {twins:,} of {len(feats):,} {split} images have a near twin in train (a "
                f"copy, resized, re-encoded or cropped): the {split} score is inflated; `kiln audit -c "
                "CONFIG` lists them, and data.exclude leaves them out"
            )
