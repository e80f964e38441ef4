"""Data-dependent starts, counted as training work: airbench's whitening conv and model.pca_init from
training images, model.head_init from the pretrained classifier and the train images' features; and the
few training images a logger shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kiln.config import Config
from kiln.console import log
from kiln.data import TrainData
from kiln.engine import head_solver
from kiln.engine.evaluate import plain_loss
from kiln.engine.feeds import CachedFeatures, LiveImages
from kiln.engine.frozen_head import Solved, describe, solve_on
from kiln.engine.loop import StepOptions
from kiln.errors import KilnError
from kiln.models import transfer
from kiln.models.init import first_conv, images_for_pca, pca_init


def data_init(cfg: Config, model: nn.Module, data: TrainData) -> float:
    """A data-dependent start (airbench's whitening conv, model.pca_init); returns its seconds."""
    t0 = time.perf_counter()
    init = getattr(model, "init_from_data", None)
    if callable(init) and not cfg.model.pretrained:
        init(sample_images(data, 5000))
    if cfg.model.pca_init:
        conv = first_conv(model)
        patches = images_for_pca(conv.kernel_size, data.spec.size)  # type: ignore[arg-type]
        pca_init(conv, sample_images(data, patches))
    return time.perf_counter() - t0


@dataclass(frozen=True)
class HeadStart:
    """What the head's start is decided with (besides the model and the data)."""

    pretrained: bool  # model.pretrained is set: features worth a probe
    solved: bool  # the frozen epochs solve the head anyway
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the training loss
    judge: head_solver.Judge  # the monitored metric on held-out features
    seed: int
    device: torch.device
    twin: Callable[[], CachedFeatures | None]  # the frozen recipe's features of this run (None: no such)


@dataclass
class Started:
    """A head that starts solved: the features it was solved on (their val split gives the run's epoch 0)
    and the solve."""

    features: CachedFeatures
    solved: Solved


def start_head(
    choice: str,
    model: nn.Module,
    data: TrainData,
    feed: LiveImages | CachedFeatures,
    step: StepOptions,
    old: transfer.Head | None,
    start: HeadStart,
) -> Started | None:
    """model.head_init: where the new head starts. A solved head (trainer.frozen_head=solve) reaches the
    same optimum from any start: nothing to do. ``probe`` (``auto`` when fine-tuning pretrained weights)
    starts it where the frozen recipe ends: solved on the frozen backbone's features (``frozen_head.py``:
    the same features and cache as ``model.freeze=backbone``), so fine-tuning moves the backbone to serve a
    head that already fits instead of one that is random ("LP-FT", Kumar et al. 2022, "Fine-Tuning can
    Distort Pretrained Features and Underperform Out-of-Distribution"); that start is the run's epoch 0.
    ``pretrained_classes`` starts it from the pretrained classifier's rows where they beat a fresh head."""
    if choice == "auto":
        choice = "probe" if start.pretrained and isinstance(feed, LiveImages) else "random"
    if choice == "random":
        return None
    if start.solved:
        log(f"kiln: model.head_init={choice} is not used: the head is solved, from any start")
        return None
    if choice == "probe":
        return probe_start(feed, start)
    if old is None:
        raise KilnError(
            "model.head_init=pretrained_classes: the pretrained weights have no classifier to start "
            "from (the weights file has no head of its own); use model.head_init=random"
        )
    with torch.no_grad():
        feats, labels = head_sample(model, data, feed, step)
        head = model.get_submodule(transfer.head_name(model))
        kept, start_loss, fresh_loss = pick_start(head, old, feats, labels)
    compared = f"train loss {start_loss:.3f}, a fresh head's {fresh_loss:.3f}, on {len(labels):,} images"
    if kept:
        log(f"kiln: head starts from the pretrained classifier's rows, mixed per class ({compared})")
    else:
        log(f"kiln: head starts fresh: the pretrained classifier's rows are a worse start ({compared})")
    return None


def probe_start(feed: LiveImages | CachedFeatures, start: HeadStart) -> Started | None:
    """The head solved on the frozen backbone's features (model.head_init=probe)."""
    features = feed if isinstance(feed, CachedFeatures) else start.twin()
    if features is None:
        log("kiln: model.head_init=probe: the frozen recipe does not apply to this config; a fresh head")
        return None
    solved = solve_on(features, start.criterion, start.judge, start.seed, start.device)
    held_out = "val" if features.data.val is not None else f"{head_solver.FOLDS}-fold over train"
    what = describe(solved, "score", held_out)
    log(f"kiln: head starts where the frozen recipe ends (model.head_init=probe): {what}")
    return Started(features, solved)


@torch.no_grad()
def pick_start(
    head: nn.Module, old: transfer.Head, feats: torch.Tensor, labels: torch.Tensor
) -> tuple[bool, float, float]:
    """Start ``head`` from the pretrained classifier's rows (``transfer.init_head_from_classes``) where that
    is a better start than the fresh head: a lower loss on ``feats``, never a worse one (on chest X-rays the
    rows were: val 0.575 against a fresh head's 0.6875). Returns (whether the rows were kept, their loss, the
    fresh head's loss)."""
    labels = labels.to(feats.device)
    fresh = {k: v.clone() for k, v in head.state_dict().items()}
    fresh_loss = float(plain_loss(head(feats).float(), labels))
    transfer.init_head_from_classes(head, old, feats, labels)  # type: ignore[arg-type]
    start_loss = float(plain_loss(head(feats).float(), labels))
    if not start_loss < fresh_loss:
        head.load_state_dict(fresh)
        return False, start_loss, fresh_loss
    return True, start_loss, fresh_loss


def head_sample(
    model: nn.Module, data: TrainData, feed: LiveImages | CachedFeatures, step: StepOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train images' features and labels to judge a head start on: the cached ones (view 0), else the
    backbone on up to 2,000 train images in the evaluation's view."""
    if isinstance(feed, CachedFeatures):
        return feed.train_features()[0], data.train.raw_labels
    data.train.materialize()  # decoded once, into the cache: the first epoch reads them from memory
    idx = data.train.spread(2000)
    x, labels = sample_images(data, 2000), data.train.raw_labels[idx]
    with transfer.without_head(model) as backbone, step.autocast():
        feats = torch.cat([backbone(x[i : i + 64]).float() for i in range(0, len(x), 64)])
    return feats, labels


def sample_images(data: TrainData, n: int) -> torch.Tensor:
    """Up to ``n`` normalised train images spread over the split, read without moving the loader."""
    idx = data.train.spread(n)
    return data.transform.train_centre(data.train.images_at(idx).to(data.train.device), idx)


def augmented_samples(data: TrainData, n: int) -> Callable[[], torch.Tensor]:
    """A function giving ``n`` training images spread over the classes after the training augmentation, on
    the 0..1 scale for display (epoch 0, step 0: drawn from its own seeded generator, not the global RNGs)."""

    def make() -> torch.Tensor:
        train = data.train
        idx = train.spread(n)
        x = train.images_at(idx).to(train.device)
        out = data.transform.augmented(x, idx.to(x.device), 0, 0)
        return data.transform.denormalize(out) if x.dtype == torch.uint8 else out  # float data: as it came

    return make
