"""``build(cfg, ...)``: config -> train/val/test loaders, class names and the batch transform."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from kiln.config import DataConfig
from kiln.data.augment import BatchTransform
from kiln.data.decode import load_images, open_image, probe, scan_files
from kiln.data.loaders import EpochOrder, MemoryLoader, StreamLoader
from kiln.data.sources import list_source
from kiln.data.splits import FileSet, ImageSet, RawSplits, Split
from kiln.errors import DataError

__all__ = ["DataBundle", "build"]


@dataclass
class DataBundle:
    train: MemoryLoader | StreamLoader
    val: MemoryLoader | StreamLoader | None
    test: MemoryLoader | StreamLoader | None
    classes: list[str]
    transform: BatchTransform
    in_channels: int
    image_size: tuple[int, int]
    skipped: list[str] = field(default_factory=list)  # samples left out as unreadable (on_bad_sample=skip)
    fingerprint: str = ""  # hash of the sample list, labels and classes (recorded in run_info.json)

    def preprocess(self) -> dict[str, Any]:
        """What a deployed model needs to see the input it saw in training."""
        return {"in_channels": self.in_channels, "image_size": list(self.image_size),
                "mean": self.transform.mean, "std": self.transform.std, "scale": "0-255 uint8 -> 0-1"}  # fmt: skip


class FileDataset(Dataset):
    """Decodes one file per item (the stream path)."""

    def __init__(self, files: FileSet, channels: int, size: tuple[int, int], resize: bool) -> None:
        self.files, self.channels, self.size, self.resize = files, channels, size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = open_image(self.files.paths[i], self.channels, self.size if self.resize else None)
        return torch.from_numpy(arr.copy()), self.files.labels[i]


def default_workers(cfg: DataConfig) -> int:
    return cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)


def _carve_val(train: Split, frac: float, seed: int) -> tuple[Split, Split | None]:
    n = len(train)
    n_val = int(round(n * frac))
    if n_val == 0:
        return train, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, tr_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    if isinstance(train, ImageSet):
        return train.subset(tr_idx), train.subset(val_idx)
    if isinstance(train, FileSet):
        return train.subset(tr_idx.tolist()), train.subset(val_idx.tolist())
    return Subset(train, tr_idx.tolist()), Subset(train, val_idx.tolist())


def _shape(cfg: DataConfig, raw: RawSplits) -> tuple[int, tuple[int, int], bool]:
    """(channels, (H, W), resize?) for the whole dataset."""
    size = cfg.image_size
    size_t = (size, size) if isinstance(size, int) else tuple(size) if size else None
    t = raw.train
    if isinstance(t, ImageSet):
        return cfg.channels or t.images.shape[1], size_t or tuple(t.images.shape[2:]), size_t is not None
    if isinstance(t, FileSet):
        c, first = probe(t.paths[0], cfg.channels)
        return c, size_t or first, size_t is not None
    x = t[0][0]
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else None
    if shape is None or len(shape) != 3:
        raise DataError(f"data.dataset: items must be (tensor [C,H,W], label); got {type(x).__name__}")
    return shape[0], shape[1:], False


def _adapt(images: torch.Tensor, channels: int, size: tuple[int, int], resize: bool) -> torch.Tensor:
    """Channel conversion / resize for array sources (digits, torchvision)."""
    if images.shape[1] != channels:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R 601-2 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if resize and tuple(images.shape[2:]) != size:
        images = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def _to_memory(split: Split, cfg: DataConfig, shape: tuple[int, tuple[int, int], bool]) -> ImageSet | None:
    channels, size, resize = shape
    if isinstance(split, ImageSet):
        return ImageSet(_adapt(split.images, channels, size, resize), split.labels, split.ids)
    if isinstance(split, FileSet):
        n_bytes = len(split) * channels * size[0] * size[1]
        if cfg.loader == "stream" or (cfg.loader == "auto" and n_bytes > cfg.memory_budget_gb * 2**30):
            return None
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
        images = load_images(split.paths, channels, size, resize, cache, default_workers(cfg))
        return ImageSet(images, torch.tensor(split.labels, dtype=torch.int64), [str(p) for p in split.paths])
    return None  # a user's Dataset: always streamed


def _measure_mean_std(s: ImageSet) -> tuple[list[float], list[float]]:
    # float64 sums over chunks: exact enough, and no N x C x H x W float copy of the whole set in memory
    c = s.images.shape[1]
    total, sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for i in range(0, len(s), 4096):
        x = s.images[i : i + 4096].to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        sq += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def build(cfg: DataConfig, seed: int, device: torch.device, rank: int = 0, world: int = 1) -> DataBundle:
    raw = list_source(cfg)
    train, val = raw.train, raw.val
    if val is None:
        train, val = _carve_val(train, cfg.val_split, seed=0)  # fixed: the same val set in every run
    if cfg.train_limit is not None and cfg.train_limit < len(train):
        train = _carve_val(train, 1 - cfg.train_limit / len(train), seed=1)[0]
    if len(train) == 0:
        raise DataError("data: the training split is empty")
    shape = _shape(cfg, raw)
    channels, size, resize = shape
    skipped = list(raw.skipped)
    if cfg.on_bad_sample == "skip":  # find unreadable images up front and leave them out, counted
        train, val, test = (_drop_bad(s, cfg, shape, skipped) for s in (train, val, raw.test))
        raw = RawSplits(train, val, test, raw.classes, skipped)
    bs = cfg.batch_size // world
    if len(train) < bs:
        raise DataError(f"data: the train split has {len(train)} images, fewer than one batch of {bs}; "
                        "lower data.batch_size")  # fmt: skip
    mem = {name: _to_memory(s, cfg, shape) if s is not None else None
           for name, s in (("train", train), ("val", val), ("test", raw.test))}  # fmt: skip

    if cfg.mean is not None:
        mean, std = list(cfg.mean), list(cfg.std or ())
    elif mem["train"] is not None:
        mean, std = _measure_mean_std(mem["train"])
    else:
        mean, std = [0.5] * channels, [0.5] * channels
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean/data.std: need {channels} values (one per channel), got {len(mean)}")

    # Keep the whole dataset on the GPU when it fits: no host->device copy per batch.
    on_gpu = device.type == "cuda" and sum(m.images.numel() for m in mem.values() if m) < 0.5 * _gpu_free(
        device
    )

    def loader(name: str, split: Split | None, bs: int, shuffle: bool) -> MemoryLoader | StreamLoader | None:
        if split is None or len(split) == 0:
            return None
        order = EpochOrder(len(split), bs, shuffle, seed, rank, world)
        m = mem[name]
        out: MemoryLoader | StreamLoader
        if m is not None:
            out = MemoryLoader(m.images.to(device) if on_gpu else m.images, m.labels, order, device)
        else:
            ds = FileDataset(split, channels, size, resize) if isinstance(split, FileSet) else split
            out = StreamLoader(ds, order, device, default_workers(cfg))
        out.ids = getattr(split, "ids", None) or (
            [str(p) for p in split.paths] if isinstance(split, FileSet) else None
        )
        return out

    ebs = cfg.eval_batch_size or max(cfg.batch_size, 256)
    return DataBundle(
        # data.batch_size is the global batch: each of `world` processes takes its share
        train=loader("train", train, cfg.batch_size // world, True),  # type: ignore[arg-type]
        val=loader("val", val, ebs, False), test=loader("test", raw.test, ebs, False),
        classes=raw.classes, transform=BatchTransform(mean, std, cfg.augment, seed, rank),
        in_channels=channels, image_size=tuple(size),  # type: ignore[arg-type]
        skipped=skipped, fingerprint=_fingerprint(train, val, raw.test, raw.classes),
    )  # fmt: skip


def _drop_bad(split: Split | None, cfg: DataConfig, shape: tuple[int, tuple[int, int], bool],
              skipped: list[str]) -> Split | None:  # fmt: skip
    if not isinstance(split, FileSet):
        return split
    bad = scan_files(split.paths, *shape, default_workers(cfg))
    skipped += [msg for _, msg in bad]
    drop = {i for i, _ in bad}
    return split.subset([i for i in range(len(split)) if i not in drop]) if drop else split


def _fingerprint(*parts: Split | list[str] | None) -> str:
    h = hashlib.sha256()
    for s in parts:
        if isinstance(s, list):
            h.update(repr(s).encode())
        elif isinstance(s, FileSet):
            h.update("\n".join(f"{p}|{y}" for p, y in zip(s.paths, s.labels, strict=True)).encode())
        elif isinstance(s, ImageSet):
            h.update(s.images.numpy().tobytes() if s.images.device.type == "cpu" else b"")
            h.update(s.labels.numpy().tobytes())
        elif s is not None:
            h.update(f"{type(s).__name__}:{len(s)}".encode())
    return h.hexdigest()[:16]


def _gpu_free(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return free
