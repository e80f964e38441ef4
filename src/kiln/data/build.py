"""From the config to loaders, in two steps, so that everything checkable is checked before any pixel is
decoded:

- ``plan(cfg)``: list the source's samples (files or arrays), carve a val split when there is none, probe
  the first image for channels and size and decide the ``ImageSpec``: the classes, the counts and the
  model's input are known now, and the model can be built and checked against the config;
- ``load_train(plan, ...)`` / ``load_split(plan, ...)``: loaders that share one interface (``loaders.py``),
  on the memory path (decoded once into the cache, the first time the pixels are needed: a frozen
  backbone whose features are cached needs none) or the stream path, and the batch transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from kiln.config import DataConfig
from kiln.console import log
from kiln.data.augment import BatchTransform
from kiln.data.exclude import apply_exclude
from kiln.data.memory import Loader, default_workers, loaders_for
from kiln.data.names import read_class_names
from kiln.data.sources import list_source
from kiln.data.splits import RawSplits, Split, fingerprint
from kiln.data.stats import mean_std
from kiln.errors import DataError
from kiln.spec import ImageSpec, Preprocess, Preset

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataPlan:
    """A dataset before any pixel is decoded: its splits, class ids and display names, and the spec."""

    splits: RawSplits
    spec: ImageSpec
    class_names: list[str]  # display names in label order (the ids themselves when none are given)

    @property
    def classes(self) -> list[str]:
        return self.splits.classes

    def split(self, name: str) -> Split | None:
        return {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}[name]

    def wanted(self, names: Sequence[str]) -> dict[str, Split]:
        """The splits of ``names`` that the data has."""
        return {n: s for n in names if (s := self.split(n)) is not None}

    @property
    def multi_label(self) -> bool:
        return self.splits.train.multi_label

    def counts(self, name: str = "train") -> list[int]:
        """Images per class in a split (multi-label: images with that label), from the sample lists."""
        split = self.split(name)
        counts = [0] * len(self.classes)
        for y in split.labels if split is not None else []:
            for k in y if isinstance(y, tuple) else (y,):
                counts[k] += 1
        return counts


def carve(train: Split, frac: float, seed: int) -> tuple[Split, Split | None]:
    """Hold out ``frac`` of ``train`` (seeded, sorted positions): (rest, held out). Stratified where the
    labels come with the sample list: each class keeps its share on both sides, and every class (multi-label:
    every label) with two or more images has one held out at least, so a small class is never missing from
    the val split its checkpoint is chosen on."""
    n_val = int(round(len(train) * frac))
    if n_val == 0:
        return train, None
    generator = torch.Generator().manual_seed(seed)
    if train.labels_listed:
        held = stratified(train.labels, frac, generator)
    else:  # a user's Dataset: reading its labels would load every item
        held = torch.randperm(len(train), generator=generator)[:n_val].tolist()
    chosen = set(held)
    rest = [i for i in range(len(train)) if i not in chosen]
    return train.subset(rest), train.subset(sorted(chosen))


def stratified(labels: Sequence[int | tuple[int, ...]], frac: float, generator: torch.Generator) -> list[int]:
    """Positions to hold out: per class its share ``frac`` (at least 1 of a class of two or more, never all
    of it), drawn at random; multi-label, one image for every label of two or more images first (the rarest
    labels first), then the rest at random up to ``frac`` of all."""
    order = torch.randperm(len(labels), generator=generator).tolist()  # a random order to draw in
    members: dict[int, list[int]] = {}
    for i in order:
        y = labels[i]
        for k in y if isinstance(y, tuple) else (y,):
            members.setdefault(int(k), []).append(i)
    held: list[int] = []
    taken: set[int] = set()
    multi = any(isinstance(y, tuple) for y in labels)
    for k in sorted(members, key=lambda k: (len(members[k]), k)):
        pool = members[k]
        want = 1 if multi else min(len(pool) - 1, max(1, round(len(pool) * frac)))
        if len(pool) < 2 or (multi and any(i in taken for i in pool)):
            continue
        for i in [i for i in pool if i not in taken][:want]:
            taken.add(i)
            held.append(i)
    if multi:  # fill up to the share with images drawn at random
        want = int(round(len(labels) * frac))
        held += [i for i in order if i not in taken][: max(0, want - len(held))]
    return held


def image_spec(cfg: DataConfig, train: Split, preset: Preset | None = None) -> ImageSpec:
    """How the whole dataset is stored and what the model sees: the config's values, else the pretrained
    weights', else the train split's first image's. Channels follow the weights: grayscale photos become
    RGB for weights that take 3 channels (and the log says so)."""
    size = as_pair(cfg.image_size or (preset.image_size if preset else None))
    channels, first = train.probe(cfg.channels)
    wanted = preset.channels if preset is not None else None
    if cfg.channels is None and wanted is not None and wanted != channels:
        kind = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel")
        log(
            f"kiln: the images are {kind}; the pretrained weights take {wanted} channels, so they are "
            "converted "
            f"to {wanted} (set data.channels to choose)"
        )
        channels = wanted
    resize = cfg.resize
    if resize == "auto":  # pretrained weights' photos are resized as the weights were trained, whatever
        # the first image's size (a folder of 224 px photos may hold one of another size)
        kept = size is None or (size == first and preset is None)
        resize = "none" if kept else "squash" if train.in_memory else "crop"
    crop_pct = cfg.crop_pct or (preset.crop_pct if preset else None) or (0.875 if resize == "crop" else 1.0)
    interpolation = cfg.interpolation or (preset.interpolation if preset else None) or "bilinear"
    return ImageSpec(channels, size or first, resize, crop_pct if resize == "crop" else 1.0, interpolation)


def plan(cfg: DataConfig, preset: Preset | None = None, spec: ImageSpec | None = None) -> DataPlan:
    """The source's splits with val carved out of train when there is none, the train limit applied and,
    with data.on_bad_sample=skip, unreadable files left out (and listed in ``skipped``). Decodes nothing
    (but the first image's header, and every file's with on_bad_sample=skip)."""
    raw = apply_exclude(list_source(cfg), cfg.exclude)
    train, val = raw.train, raw.val
    if val is None:
        train, val = carve(train, cfg.val_split, seed=0)  # fixed: the same val set in every run
    if cfg.train_limit is not None and cfg.train_limit < len(train):
        train = carve(train, 1 - cfg.train_limit / len(train), seed=1)[0]
    if len(train) == 0:
        raise DataError("data: the training split is empty")
    spec = spec or image_spec(cfg, train, preset)
    skipped, test = list(raw.skipped), raw.test
    if cfg.on_bad_sample == "skip":  # find unreadable images up front and leave them out, counted
        train, val, test = (_drop_bad(s, spec, default_workers(cfg), skipped) for s in (train, val, test))
    names = read_class_names(cfg.class_names, raw.classes) if cfg.class_names else list(raw.classes)
    splits = RawSplits(train, val, test, raw.classes, skipped, raw.notes)  # type: ignore[arg-type]
    return DataPlan(splits, spec, names)


@dataclass
class TrainData:
    """What training reads: the train loader (always), val and test (when the data has them)."""

    train: Loader
    val: Loader | None
    test: Loader | None
    classes: list[str]
    class_names: list[str]
    transform: BatchTransform
    preprocess: Preprocess
    plan: DataPlan  # the sample lists the loaders read
    skipped: list[str] = field(default_factory=list)  # samples left out as unreadable (on_bad_sample=skip)
    fingerprint: str = ""  # hash of the sample lists, labels and classes (recorded in run_info.json)

    @property
    def spec(self) -> ImageSpec:
        return self.preprocess.spec

    @cached_property
    def counts(self) -> list[int]:
        """Train images per class (read when asked: a user's Dataset gives labels only item by item)."""
        return self.plan.counts("train")

    @property
    def multi_label(self) -> bool:
        return self.plan.multi_label

    def content_key(self, split: str) -> str | None:
        """What identifies a split's stored pixels (cached features are keyed by it)."""
        source = self.plan.split(split)
        return source.content_key(self.spec, split == "train") if source is not None else None

    def loader(self, split: str) -> Loader | None:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


def load_train(
    plan: DataPlan,
    cfg: DataConfig,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    preset: Preset | None = None,
) -> TrainData:
    """Loaders for training: train, val and test, normalised with the weights' mean/std (measured on the
    train images only when neither the config nor the weights give them)."""
    bs = cfg.batch_size // world
    if len(plan.splits.train) < bs:
        raise DataError(
            f"data: the train split has {len(plan.splits.train)} images, fewer than one batch of "
            f"{bs}; lower data.batch_size"
        )
    loaders, stored = loaders_for(plan.wanted(SPLITS), plan.spec, cfg, seed, device, rank, world)
    train = stored.get("train")
    mean, std = mean_std(
        cfg, preset, (lambda: train.arrays) if train is not None else None, plan.spec.channels
    )
    extents = train.extents if train is not None else (lambda: plan.splits.train.extents(plan.spec, True))
    transform = BatchTransform(
        mean, std, cfg.augment, seed, rank, plan.spec, extents, as_pair(cfg.train_image_size)
    )
    return TrainData(
        train=loaders["train"],
        val=loaders.get("val"),
        test=loaders.get("test"),
        classes=plan.classes,
        class_names=plan.class_names,
        transform=transform,
        preprocess=Preprocess(plan.spec, tuple(mean), tuple(std)),
        plan=plan,
        skipped=plan.splits.skipped,
        fingerprint=fingerprint([plan.splits.train, plan.splits.val, plan.splits.test], plan.classes),
    )


def load_split(
    plan: DataPlan, cfg: DataConfig, split: str, device: torch.device, preprocess: Preprocess
) -> tuple[Loader | None, BatchTransform]:
    """One split's loader (evaluation, export checks), normalised as the model was trained (the
    checkpoint's record, not statistics measured on today's data)."""
    loaders, _ = loaders_for(plan.wanted((split,)), plan.spec, cfg, 0, device, 0, 1)
    transform = BatchTransform(list(preprocess.mean), list(preprocess.std), cfg.augment, 0, spec=plan.spec)
    return loaders.get(split), transform


def build(
    cfg: DataConfig,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    preset: Preset | None = None,
) -> TrainData:
    """``load_train(plan(cfg))`` in one call (for scripts and tests)."""
    return load_train(plan(cfg, preset), cfg, seed, device, rank, world, preset)


def as_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def _drop_bad(split: Split | None, spec: ImageSpec, workers: int, skipped: list[str]) -> Split | None:
    if split is None:
        return None
    bad = split.scan(spec, workers)
    skipped += [msg for _, msg in bad]
    drop = {i for i, _ in bad}
    return split.subset([i for i in range(len(split)) if i not in drop]) if drop else split
