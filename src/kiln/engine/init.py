"""Data-dependent starts, counted as training work: airbench's whitening conv and model.pca_init from
training images, model.head_init from the pretrained classifier and the train images' features; and the
few training images a logger shows."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from kiln.config import Config
from kiln.console import log
from kiln.data import TrainData
from kiln.engine.feeds import CachedFeatures, LiveImages
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


@torch.no_grad()
def init_head(
    model: nn.Module,
    data: TrainData,
    feed: LiveImages | CachedFeatures,
    step: StepOptions,
    old: transfer.Head | None,
) -> None:
    """model.head_init: pretrained_classes, from the train images' features (the frozen backbone's, when
    the run trains on them, else up to 2,000 train images in the evaluation's view)."""
    if old is None:
        raise KilnError(
            "model.head_init=pretrained_classes: the pretrained weights have no classifier to start "
            "from (the weights file has no head of its own); use model.head_init=random"
        )
    if isinstance(feed, CachedFeatures):
        feats, labels = feed.train_features()[0], data.train.raw_labels
    else:
        idx = data.train.spread(2000)
        x, labels = sample_images(data, 2000), data.train.raw_labels[idx]
        with transfer.without_head(model) as backbone, step.autocast():
            feats = torch.cat([backbone(x[i : i + 64]).float() for i in range(0, len(x), 64)])
    head = model.get_submodule(transfer.head_name(model))
    missing = transfer.init_head_from_classes(head, old, feats, labels)  # type: ignore[arg-type]
    empty = f" (classes {missing} have no images: random rows)" if missing else ""
    log(
        "kiln: head starts from the pretrained classifier, mixed per class by its predictions on "
        f"{len(labels)} "
        f"train images{empty}"
    )


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
