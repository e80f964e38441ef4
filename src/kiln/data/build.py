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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from kiln.config import DataConfig
from kiln.console import log
from kiln.data.augment import BatchTransform
from kiln.data.loaders import EpochOrder, MemoryLoader, StreamLoader
from kiln.data.names import read_class_names
from kiln.data.sources import list_source
from kiln.data.splits import RawSplits, Split, fingerprint
from kiln.data.stats import mean_std
from kiln.errors import DataError
from kiln.spec import ImageSpec, Preprocess, Preset

Loader = MemoryLoader | StreamLoader
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

    def counts(self, name: str = "train") -> list[int]:
        """Images per class in a split (from the sample lists: nothing is decoded)."""
        split = self.split(name)
        counts = [0] * len(self.classes)
        for y in split.labels if split is not None else []:
            counts[y] += 1
        return counts


def default_workers(cfg: DataConfig) -> int:
    return cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)


def carve(train: Split, frac: float, seed: int) -> tuple[Split, Split | None]:
    """Hold out ``frac`` of ``train`` (seeded, sorted positions): (rest, held out)."""
    n_val = int(round(len(train) * frac))
    if n_val == 0:
        return train, None
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:].sort().values.tolist()), train.subset(
        perm[:n_val].sort().values.tolist()
    )


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
            f"kiln: the images are {kind}; the pretrained weights take {wanted} channels, so they are converted "
            f"to {wanted} (set data.channels to choose)"
        )
        channels = wanted
    resize = cfg.resize
    if resize == "auto":
        resize = "none" if size in (None, first) else "squash" if train.in_memory else "crop"
    crop_pct = cfg.crop_pct or (preset.crop_pct if preset else None) or (0.875 if resize == "crop" else 1.0)
    interpolation = cfg.interpolation or (preset.interpolation if preset else None) or "bilinear"
    return ImageSpec(channels, size or first, resize, crop_pct if resize == "crop" else 1.0, interpolation)


def plan(cfg: DataConfig, preset: Preset | None = None, spec: ImageSpec | None = None) -> DataPlan:
    """The source's splits with val carved out of train when there is none, the train limit applied and,
    with data.on_bad_sample=skip, unreadable files left out (and listed in ``skipped``). Decodes nothing
    (but the first image's header, and every file's with on_bad_sample=skip)."""
    raw = list_source(cfg)
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
    return DataPlan(RawSplits(train, val, test, raw.classes, skipped), spec, names)  # type: ignore[arg-type]


class Stored:
    """A split's images as stored, decoded (through the cache) the first time the pixels are needed; a few
    images for a gallery or a graph are decoded on their own before that."""

    def __init__(
        self,
        split: Split,
        spec: ImageSpec,
        train: bool,
        cfg: DataConfig,
        name: str,
        device: torch.device | None = None,
    ) -> None:
        self.split, self.spec, self.train, self.cfg, self.name, self.device = (
            split,
            spec,
            train,
            cfg,
            name,
            device,
        )

    @cached_property
    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        cache = Path(self.cfg.cache_dir).expanduser() if self.cfg.cache_dir else None
        images, extents = self.split.to_memory(
            self.spec, cache, default_workers(self.cfg), self.train, f"{self.name} images"
        )
        return (images.to(self.device) if self.device is not None else images), extents

    def tensor(self) -> torch.Tensor:
        return self.arrays[0]

    def decoded(self) -> bool:
        return "arrays" in self.__dict__

    def some(self, idx: torch.Tensor) -> torch.Tensor:
        return self.split.subset(idx.tolist()).to_memory(self.spec, None, 1, self.train, "images")[0]

    def extents(self) -> torch.Tensor:
        """The (h, w) each image fills: from the decoded arrays, else from the files' headers."""
        return self.arrays[1] if self.decoded() else self.split.extents(self.spec, self.train)

    @property
    def nbytes(self) -> int:
        return int(self.split.memory_bytes(self.spec, self.train) or 0)


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

    def content_key(self, split: str) -> str | None:
        """What identifies a split's stored pixels (cached features are keyed by it)."""
        source = self.plan.split(split)
        return source.content_key(self.spec, split == "train") if source is not None else None

    def loader(self, split: str) -> Loader | None:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


def _loaders(
    plan: DataPlan,
    cfg: DataConfig,
    names: Sequence[str],
    seed: int,
    device: torch.device,
    rank: int,
    world: int,
) -> tuple[dict[str, Loader], dict[str, Stored]]:
    spec, bs = plan.spec, cfg.batch_size // world
    wanted = {n: s for n in names if (s := plan.split(n)) is not None and len(s)}
    stored = {
        n: Stored(s, spec, n == "train", cfg, n) for n, s in wanted.items() if _in_memory(s, spec, cfg, n)
    }
    # the whole dataset on the GPU when it fits: no host->device copy per batch
    if (
        device.type == "cuda"
        and sum(s.nbytes for s in stored.values()) < 0.5 * torch.cuda.mem_get_info(device)[0]
    ):
        stored = {n: replace_device(s, device) for n, s in stored.items()}
    eval_bs = cfg.eval_batch_size or eval_batch(cfg.batch_size, spec, device)
    loaders: dict[str, Loader] = {}
    workers = default_workers(cfg)
    for name, split in wanted.items():
        train = name == "train"
        order = EpochOrder(len(split), bs if train else eval_bs, train, seed, rank, world)
        if name in stored:
            labels = torch.tensor(split.labels, dtype=torch.int64)
            loaders[name] = MemoryLoader(stored[name], labels, order, device, split.ids)
        else:
            loaders[name] = StreamLoader(
                split.dataset(spec, train), lambda s=split: s.labels, order, device, workers, split.ids
            )
    return loaders, stored


def replace_device(stored: Stored, device: torch.device) -> Stored:
    return Stored(stored.split, stored.spec, stored.train, stored.cfg, stored.name, device)


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
    loaders, stored = _loaders(plan, cfg, SPLITS, seed, device, rank, world)
    train = stored.get("train")
    mean, std = mean_std(cfg, preset, train.arrays if train is not None else None, plan.spec.channels)
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
    loaders, _ = _loaders(plan, cfg, (split,), 0, device, 0, 1)
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


def eval_batch(batch_size: int, spec: ImageSpec, device: torch.device) -> int:
    """data.eval_batch_size when unset: large for small images or on a GPU; for photos on a CPU small, where
    the activations of a few images stay in cache (tf_efficientnet_lite0 at 224 px, 2 cores: 7 ms per image
    in batches of 4, 26 in batches of 32, 92 in batches of 128)."""
    big = max(batch_size, 256)
    if device.type == "cuda":
        return big
    return min(big, max(4, 2**19 // (spec.channels * spec.size[0] * spec.size[1])))


def as_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def _in_memory(split: Split, spec: ImageSpec, cfg: DataConfig, name: str) -> bool:
    if split.in_memory:
        return True
    n_bytes = split.memory_bytes(spec, name == "train")
    if n_bytes is None or cfg.loader == "stream":
        return False
    return cfg.loader == "memory" or n_bytes <= cfg.memory_budget_gb * 2**30


def _drop_bad(split: Split | None, spec: ImageSpec, workers: int, skipped: list[str]) -> Split | None:
    if split is None:
        return None
    bad = split.scan(spec, workers)
    skipped += [msg for _, msg in bad]
    drop = {i for i, _ in bad}
    return split.subset([i for i in range(len(split)) if i not in drop]) if drop else split
