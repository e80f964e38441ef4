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
from kiln.data.spec import ImageSpec, Preset
from kiln.data.splits import RawSplits, Split, fingerprint
from kiln.errors import DataError

__all__ = ["DataBundle", "ImageSpec", "Preset", "build", "list_splits"]

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
        """What a deployed model needs to see the input it saw in training (``preprocess_spec`` reads it back)."""
        return {
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            **self.spec.record(),
            "mean": self.transform.mean,
            "std": self.transform.std,
            "scale": "0-255 uint8 -> 0-1",
        }


def from_record(pre: dict[str, Any]) -> tuple[ImageSpec, Preset]:
    """The geometry and the mean/std of a preprocessing record (a checkpoint's, preprocess.json)."""
    spec = preprocess_spec(pre)
    return spec, Preset(
        "the checkpoint", spec.size, spec.crop_pct, spec.interpolation, tuple(pre["mean"]), tuple(pre["std"])
    )


def preprocess_spec(pre: dict[str, Any]) -> ImageSpec:
    """The ImageSpec of a preprocessing record (a checkpoint's, preprocess.json); records written before
    photos had their own geometry resized every image to image_size."""
    size = tuple(int(v) for v in pre["image_size"])
    return ImageSpec(
        int(pre["in_channels"]),
        size,
        pre.get("resize", "squash"),
        float(pre.get("crop_pct", 1.0)),
        pre.get("interpolation", "bilinear"),
    )  # type: ignore[arg-type]


def has_test_split(cfg: DataConfig) -> bool:
    """Whether the source has a test split (listing only: nothing is decoded)."""
    return list_source(cfg).test is not None


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


def image_spec(cfg: DataConfig, train: Split, preset: Preset | None = None) -> ImageSpec:
    """How the whole dataset is stored and what the model sees: the config's values, else the pretrained
    weights', else the train split's first image's size."""
    size = cfg.image_size or (preset.image_size if preset else None)
    size_t = _pair(size)
    channels, first = train.probe(cfg.channels)
    resize = cfg.resize
    if resize == "auto":
        resize = "none" if size_t in (None, first) else "squash" if train.in_memory else "crop"
    crop_pct = cfg.crop_pct or (preset.crop_pct if preset else None) or (0.875 if resize == "crop" else 1.0)
    interpolation = cfg.interpolation or (preset.interpolation if preset else None) or "bilinear"
    return ImageSpec(channels, size_t or first, resize, crop_pct if resize == "crop" else 1.0, interpolation)  # type: ignore[arg-type]


def list_splits(
    cfg: DataConfig, preset: Preset | None = None, spec: ImageSpec | None = None
) -> tuple[RawSplits, ImageSpec]:
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
    spec = spec or image_spec(cfg, train, preset)
    skipped = list(raw.skipped)
    test = raw.test
    if cfg.on_bad_sample == "skip":  # find unreadable images up front and leave them out, counted
        train, val, test = (_drop_bad(s, spec, default_workers(cfg), skipped) for s in (train, val, test))
    return RawSplits(train, val, test, raw.classes, skipped), spec  # type: ignore[arg-type]


def build(
    cfg: DataConfig,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    splits: Sequence[str] = SPLITS,
    preset: Preset | None = None,
    spec: ImageSpec | None = None,
) -> DataBundle:
    """Loaders for the ``splits`` asked for. Training asks for all three, with the pretrained weights'
    ``preset`` (mean/std measured on train only when neither the config nor the weights give them); eval
    and export ask only for the split they use, with the checkpoint's ``spec`` and mean/std (``from_record``)."""
    raw, spec = list_splits(cfg, preset, spec)
    parts = {"train": raw.train, "val": raw.val, "test": raw.test}
    bs = cfg.batch_size // world
    if "train" in splits and len(raw.train) < bs:
        raise DataError(
            f"data: the train split has {len(raw.train)} images, fewer than one batch of {bs}; "
            "lower data.batch_size"
        )
    wanted = {n: s for n, s in parts.items() if n in splits and s is not None and len(s)}
    cache, workers = (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None), default_workers(cfg)
    memory = {
        n: s.to_memory(spec, cache, workers, n == "train")
        for n, s in wanted.items()
        if _in_memory(s, spec, cfg, n == "train")
    }
    if "train" in memory:
        extents = memory["train"][1]
    else:  # streamed (or not asked for): from the files' headers
        extents = wanted["train"].extents(spec, True) if "train" in wanted else None
    mean, std = _mean_std(cfg, preset, memory.get("train"), spec.channels)
    if len(mean) != spec.channels or len(std) != spec.channels:
        raise DataError(f"data.mean/data.std: need {spec.channels} values (one per channel), got {len(mean)}")
    # Keep the whole dataset on the GPU when it fits: no host->device copy per batch.
    on_gpu = (
        device.type == "cuda"
        and sum(m[0].numel() for m in memory.values()) < 0.5 * torch.cuda.mem_get_info(device)[0]
    )
    ebs = cfg.eval_batch_size or eval_batch(cfg.batch_size, spec, device)

    def loader(name: str) -> Loader | None:
        split = wanted.get(name)
        if split is None:
            return None
        train = name == "train"
        order = EpochOrder(len(split), bs if train else ebs, train, seed, rank, world)
        if name in memory:
            images = memory[name][0].to(device) if on_gpu else memory[name][0]
            return MemoryLoader(
                images, torch.tensor(split.labels, dtype=torch.int64), order, device, split.ids
            )
        return StreamLoader(
            split.dataset(spec, train), lambda: split.labels, order, device, workers, split.ids
        )

    return DataBundle(
        train=loader("train"),
        val=loader("val"),
        test=loader("test"),
        classes=raw.classes,
        transform=BatchTransform(
            mean, std, cfg.augment, seed, rank, spec, extents, _pair(cfg.train_image_size)
        ),
        spec=spec,
        skipped=raw.skipped,
        fingerprint=fingerprint([raw.train, raw.val, raw.test], raw.classes),
    )


def eval_batch(batch_size: int, spec: ImageSpec, device: torch.device) -> int:
    """data.eval_batch_size when unset: large for small images or on a GPU; for photos on a CPU small, where
    the activations of a few images stay in cache (tf_efficientnet_lite0 at 224 px, 2 cores: 7 ms per image
    in batches of 4, 26 in batches of 32, 92 in batches of 128)."""
    big = max(batch_size, 256)
    if device.type == "cuda":
        return big
    return min(big, max(4, 2**19 // (spec.channels * spec.size[0] * spec.size[1])))


def _pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    return (size, size) if isinstance(size, int) else tuple(size) if size else None  # type: ignore[return-value]


def _in_memory(split: Split, spec: ImageSpec, cfg: DataConfig, train: bool) -> bool:
    if split.in_memory:
        return True
    n_bytes = split.memory_bytes(spec, train)
    if n_bytes is None or cfg.loader == "stream":
        return False
    return cfg.loader == "memory" or n_bytes <= cfg.memory_budget_gb * 2**30


def _mean_std(
    cfg: DataConfig, preset: Preset | None, train: tuple[torch.Tensor, torch.Tensor] | None, channels: int
) -> tuple[list[float], list[float]]:
    """The config's mean/std; else the pretrained weights'; else measured on the decoded train images (over
    each photo's own extent on its canvas); else 0.5 (a streamed train split)."""
    if cfg.mean is not None:
        return list(cfg.mean), list(cfg.std or ())
    if preset is not None and preset.mean is not None and preset.std is not None:
        return list(preset.mean), list(preset.std)
    if train is None:
        return [0.5] * channels, [0.5] * channels
    images, extents = train
    whole = bool((extents == torch.tensor(images.shape[2:], dtype=extents.dtype)).all())
    rows, cols = torch.arange(images.shape[2])[None, :, None], torch.arange(images.shape[3])[None, None, :]
    # float64 sums over chunks: exact enough, and no N x C x H x W float copy of the whole set in memory
    total, sq, count = (
        torch.zeros(channels, dtype=torch.float64),
        torch.zeros(channels, dtype=torch.float64),
        0,
    )
    for i in range(0, len(images), 4096):
        x = images[i : i + 4096].to(torch.float64) / 255.0
        if whole:
            count += x.shape[0] * x.shape[2] * x.shape[3]
        else:
            e = extents[i : i + 4096]
            inside = (rows < e[:, :1, None]) & (cols < e[:, 1:, None])
            x, count = x * inside[:, None], count + int(inside.sum())
        total += x.sum((0, 2, 3))
        sq += (x * x).sum((0, 2, 3))
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
