"""Which splits are kept in memory (decoded once into the cache, the first time their pixels are needed)
and which stream from their files, and the loaders over them (``loaders.py``)."""

from __future__ import annotations

import os
from functools import cached_property

import torch

from kiln.config import DataConfig
from kiln.data.loaders import EpochOrder, MemoryLoader, StreamLoader
from kiln.data.splits import Split
from kiln.spec import ImageSpec

Loader = MemoryLoader | StreamLoader


def default_workers(cfg: DataConfig) -> int:
    return cfg.num_workers if cfg.num_workers is not None else min(8, os.cpu_count() or 1)


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
        from kiln.data.cache import cache_folder

        images, extents = self.split.to_memory(
            self.spec,
            cache_folder(self.cfg.cache_dir),
            default_workers(self.cfg),
            self.train,
            f"{self.name} images",
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


def eval_batch(batch_size: int, spec: ImageSpec, device: torch.device) -> int:
    """data.eval_batch_size when unset: large for small images or on a GPU; for photos on a CPU small, where
    the activations of a few images stay in cache (tf_efficientnet_lite0 at 224 px, 2 cores: 7 ms per image
    in batches of 4, 26 in batches of 32, 92 in batches of 128)."""
    big = max(batch_size, 256)
    if device.type == "cuda":
        return big
    return min(big, max(4, 2**19 // (spec.channels * spec.size[0] * spec.size[1])))


def _in_memory(split: Split, spec: ImageSpec, cfg: DataConfig, name: str) -> bool:
    if split.in_memory:
        return True
    n_bytes = split.memory_bytes(spec, name == "train")
    if n_bytes is None or cfg.loader == "stream":
        return False
    return cfg.loader == "memory" or n_bytes <= cfg.memory_budget_gb * 2**30


def loaders_for(
    splits: dict[str, Split],
    spec: ImageSpec,
    cfg: DataConfig,
    seed: int,
    device: torch.device,
    rank: int,
    world: int,
) -> tuple[dict[str, Loader], dict[str, Stored]]:
    """A loader per split (none for an empty one): over stored images when the split fits the memory
    budget, else streaming its files; the stored images are decoded the first time they are needed."""
    bs = cfg.batch_size // world
    wanted = {n: s for n, s in splits.items() if len(s)}
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
        balanced = split.label_tensor() if train and cfg.sampler == "balanced" else None
        order = EpochOrder(len(split), bs if train else eval_bs, train, seed, rank, world, balanced)
        if name in stored:
            loaders[name] = MemoryLoader(stored[name], split.label_tensor(), order, device, split.ids)
        else:
            loaders[name] = StreamLoader(
                split.dataset(spec, train), split.label_tensor, order, device, workers, split.ids
            )
    return loaders, stored


def replace_device(stored: Stored, device: torch.device) -> Stored:
    return Stored(stored.split, stored.spec, stored.train, stored.cfg, stored.name, device)
