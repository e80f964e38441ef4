"""``build(cfg, ...)``: config -> train/val/test loaders, class names and the batch transform.

A source lists its samples as ``Split``s (``sources.py``); build carves a val split when there is none,
chooses per split between the memory path (decoded once, cached) and the stream path, measures mean/std
when the config gives none, and hands out loaders that share one interface (``loaders.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kiln.config import DataConfig
from kiln.data.augment import BatchTransform
from kiln.data.loaders import EpochOrder, MemoryLoader, StreamLoader
from kiln.data.sources import list_source
from kiln.data.splits import ImageSpec, RawSplits, Split, fingerprint
from kiln.errors import DataError

__all__ = ["DataBundle", "ImageSpec", "build", "list_splits"]

Loader = MemoryLoader | StreamLoader
SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    train: Loader | None  # None when the caller did not ask for it (eval, export)
    val: Loader | None
    test: Loader | None
    classes: list[str]
    transform: BatchTransform
    spec: ImageSpec
    skipped: list[str] = field(default_factory=list)  # samples left out as unreadable (on_bad_sample=skip)
    fingerprint: str = ""  # hash of the sample lists, labels and classes (recorded in run_info.json)

    @property
    def in_channels(self) -> int:
        return self.spec.channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.spec.size

    def preprocess(self) -> dict[str, Any]:
        """What a deployed model needs to see the input it saw in training."""
        return {"in_channels": self.in_channels, "image_size": list(self.image_size),
                "mean": self.transform.mean, "std": self.transform.std, "scale": "0-255 uint8 -> 0-1"}  # fmt: skip


def default_workers(cfg: DataConfig) -> int:
    return cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)


def carve(train: Split, frac: float, seed: int) -> tuple[Split, Split | None]:
    """Hold out ``frac`` of ``train`` (seeded, sorted positions): (rest, held out)."""
    n = len(train)
    n_val = int(round(n * frac))
    if n_val == 0:
        return train, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:].sort().values.tolist()), train.subset(
        perm[:n_val].sort().values.tolist()
    )


def image_spec(cfg: DataConfig, train: Split) -> ImageSpec:
    """Channels and (H, W) for the whole dataset: the config's, else the train split's first image's."""
    size = cfg.image_size
    size_t = (size, size) if isinstance(size, int) else tuple(size) if size else None
    channels, first = train.probe(cfg.channels)
    return ImageSpec(channels, size_t or first, size_t is not None)  # type: ignore[arg-type]


def list_splits(cfg: DataConfig) -> tuple[RawSplits, ImageSpec]:
    """The source's splits with val carved out of train when there is none, the train limit applied and,
    with data.on_bad_sample=skip, unreadable files left out (and listed in ``skipped``)."""
    raw = list_source(cfg)
    train, val = raw.train, raw.val
    if val is None:
        train, val = carve(train, cfg.val_split, seed=0)  # fixed: the same val set in every run
    if cfg.train_limit is not None and cfg.train_limit < len(train):
        train = carve(train, 1 - cfg.train_limit / len(train), seed=1)[0]
    if len(train) == 0:
        raise DataError("data: the training split is empty")
    spec = image_spec(cfg, train)
    skipped = list(raw.skipped)
    test = raw.test
    if cfg.on_bad_sample == "skip":  # find unreadable images up front and leave them out, counted
        train, val, test = (_drop_bad(s, spec, default_workers(cfg), skipped) for s in (train, val, test))
    return RawSplits(train, val, test, raw.classes, skipped), spec  # type: ignore[arg-type]


def build(cfg: DataConfig, seed: int, device: torch.device, rank: int = 0, world: int = 1,
          splits: Sequence[str] = SPLITS, mean_std: tuple[list[float], list[float]] | None = None) -> DataBundle:  # fmt: skip
    """Loaders for the ``splits`` asked for (eval and export ask only for the one they use, with the
    checkpoint's ``mean_std``; training asks for all three and measures mean/std on train when unset)."""
    raw, spec = list_splits(cfg)
    parts = {"train": raw.train, "val": raw.val, "test": raw.test}
    bs = cfg.batch_size // world
    if "train" in splits and len(raw.train) < bs:
        raise DataError(f"data: the train split has {len(raw.train)} images, fewer than one batch of {bs}; "
                        "lower data.batch_size")  # fmt: skip
    wanted = {n: s for n, s in parts.items() if n in splits and s is not None and len(s)}
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    memory = {
        n: s.to_memory(spec, cache, default_workers(cfg))
        for n, s in wanted.items()
        if _in_memory(s, spec, cfg)
    }
    mean, std = mean_std or _mean_std(cfg, memory.get("train"), spec.channels)
    if len(mean) != spec.channels or len(std) != spec.channels:
        raise DataError(f"data.mean/data.std: need {spec.channels} values (one per channel), got {len(mean)}")
    # Keep the whole dataset on the GPU when it fits: no host->device copy per batch.
    on_gpu = (
        device.type == "cuda"
        and sum(m.numel() for m in memory.values()) < 0.5 * torch.cuda.mem_get_info(device)[0]
    )
    ebs = cfg.eval_batch_size or max(cfg.batch_size, 256)

    def loader(name: str) -> Loader | None:
        split = wanted.get(name)
        if split is None:
            return None
        train = name == "train"
        order = EpochOrder(len(split), bs if train else ebs, train, seed, rank, world)
        if name in memory:
            images = memory[name].to(device) if on_gpu else memory[name]
            return MemoryLoader(
                images, torch.tensor(split.labels, dtype=torch.int64), order, device, split.ids
            )
        return StreamLoader(split.dataset(spec), order, device, default_workers(cfg), split.ids)

    return DataBundle(
        train=loader("train"), val=loader("val"), test=loader("test"), classes=raw.classes,
        transform=BatchTransform(mean, std, cfg.augment, seed, rank), spec=spec, skipped=raw.skipped,
        fingerprint=fingerprint([raw.train, raw.val, raw.test], raw.classes),
    )  # fmt: skip


def _in_memory(split: Split, spec: ImageSpec, cfg: DataConfig) -> bool:
    n_bytes = split.memory_bytes(spec)
    if split.in_memory:
        return True
    if n_bytes is None or cfg.loader == "stream":
        return False
    return cfg.loader == "memory" or n_bytes <= cfg.memory_budget_gb * 2**30


def _mean_std(cfg: DataConfig, train: torch.Tensor | None, channels: int) -> tuple[list[float], list[float]]:
    """The config's mean/std; else measured on the decoded train images; else 0.5 (a streamed train split)."""
    if cfg.mean is not None:
        return list(cfg.mean), list(cfg.std or ())
    if train is None:
        return [0.5] * channels, [0.5] * channels
    # float64 sums over chunks: exact enough, and no N x C x H x W float copy of the whole set in memory
    total, sq, count = (
        torch.zeros(channels, dtype=torch.float64),
        torch.zeros(channels, dtype=torch.float64),
        0,
    )
    for i in range(0, len(train), 4096):
        x = train[i : i + 4096].to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        sq += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _drop_bad(split: Split | None, spec: ImageSpec, workers: int, skipped: list[str]) -> Split | None:
    if split is None:
        return None
    bad = split.scan(spec, workers)
    skipped += [msg for _, msg in bad]
    drop = {i for i, _ in bad}
    return split.subset([i for i in range(len(split)) if i not in drop]) if drop else split
