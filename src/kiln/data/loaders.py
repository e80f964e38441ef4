"""Two loaders, one interface: iterate ``(x_uint8, y, idx)`` batches, ``len()``, ``set_epoch()``,
``state_dict()``/``load_state_dict()`` (epoch and position in it), so resume is exact on either path.

The sample order of an epoch is a permutation drawn from (seed, epoch) alone: nothing about it has to be
saved but the epoch and how many batches were already consumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from kiln.data.augment import seeded_generator
from kiln.data.sampling import balanced_order

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class EpochOrder:
    """Which sample indices make up each batch of an epoch (shuffled or not, sharded under DDP)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        balanced: torch.Tensor | None = None,
    ) -> None:
        """``balanced``: the train labels, for class-balanced epochs (data.sampler: balanced)."""
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world, self.balanced = rank, world, balanced
        self.epoch, self.position = 0, 0  # position: batches of this epoch already handed out

    def copy(self, batch_size: int | None = None) -> EpochOrder:
        """The same epochs (sampler, seed and shard) in batches of ``batch_size``, with a position of its own:
        a frozen backbone's features are fed in exactly the order the images would be."""
        size = batch_size or self.batch_size
        return EpochOrder(self.n, size, self.shuffle, self.seed, self.rank, self.world, self.balanced)

    def indices(self) -> torch.Tensor:
        generator = seeded_generator(torch.device("cpu"), self.seed, self.epoch)
        if self.shuffle and self.balanced is not None:  # drawn from (seed, epoch) alone: resumes exactly
            order = balanced_order(self.balanced, generator, self.n)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        if self.world > 1:
            if (
                self.shuffle
            ):  # training: pad so every rank takes the same number of steps (as DistributedSampler)
                per_rank = math.ceil(self.n / self.world)
                order = torch.cat([order, order[: per_rank * self.world - self.n]])
            order = order[self.rank :: self.world]  # evaluation: no padding, every sample counted once
        return order

    def __len__(self) -> int:
        n = math.ceil(self.n / self.world) if self.shuffle or self.world == 1 else len(self.indices())
        return math.ceil(n / self.batch_size)

    def batches(self) -> Iterator[torch.Tensor]:
        """The rest of this epoch's batches, from ``position`` on."""
        order = self.indices()
        for b in range(self.position, math.ceil(len(order) / self.batch_size)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0


class _Resumable:
    """``state_dict`` counts the batches the *consumer* has taken, not those prefetched by workers."""

    order: EpochOrder
    ids: list[str] | None = None  # per sample: file path or "source[i]", for reports

    def images_at(self, idx: torch.Tensor) -> torch.Tensor:
        """The stored uint8 images at these sample positions (for galleries)."""
        raise NotImplementedError

    def in_order(
        self, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sample once, in index order, as (images on the device, positions), touching no epoch
        state (for a frozen backbone's feature pass); under DDP, this ``rank``'s share of them."""
        raise NotImplementedError

    def chunks(self, batch_size: int, rank: int, world: int) -> list[list[int]]:
        """The positions ``in_order`` gives ``rank``, batch by batch: its contiguous share of the split."""
        share = math.ceil(self.order.n / world)
        start, stop = rank * share, min(self.order.n, (rank + 1) * share)
        return [list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size)]

    def spread(self, n: int) -> torch.Tensor:
        """Up to ``n`` sample positions spread evenly over the split: image folders list class by class,
        so the first ``n`` could all be one class (a data-dependent init or a gallery wants them all)."""
        total = self.order.n
        return torch.linspace(0, total - 1, min(n, total)).round().long() if total else torch.arange(0)

    def _track(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            self.order.position += 1
            yield batch
        self.order.position = 0  # epoch finished; the next starts at its beginning
        self.order.epoch += 1

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "position": self.order.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.order.epoch, self.order.position = int(state["epoch"]), int(state["position"])


class Deferred(Protocol):
    """Images decoded when first needed (``data/build.py:Stored``): the whole split, or a few on their own."""

    def tensor(self) -> torch.Tensor: ...
    def decoded(self) -> bool: ...
    def some(self, idx: torch.Tensor) -> torch.Tensor: ...


class MemoryLoader(_Resumable):
    """Batches gathered from one in-memory tensor (on the GPU when it is there): uint8 images as stored,
    decoded the first time a batch is asked for (``Deferred``), or a frozen backbone's features."""

    def __init__(
        self,
        images: torch.Tensor | Deferred,
        labels: torch.Tensor,
        order: EpochOrder,
        device: torch.device,
        ids: list[str] | None = None,
    ) -> None:
        self._images, self._labels, self.order, self.device = images, labels, order, device
        self.ids = ids

    @property
    def images(self) -> torch.Tensor:
        if not isinstance(self._images, torch.Tensor):
            self._images = self._images.tensor()  # decoded (or read from the cache) now, once
        return self._images

    @property
    def labels(self) -> torch.Tensor:
        if self._labels.device != self.images.device:
            self._labels = self._labels.to(self.images.device)
        return self._labels

    @property
    def raw_labels(self) -> torch.Tensor:
        """The labels without decoding anything (class counts, samplers)."""
        return self._labels

    def materialize(self) -> None:
        """Decode now (a phase of its own, with its own progress), not inside the first batch."""
        _ = self.images

    def __iter__(self) -> Iterator[Batch]:
        return self._track(self._batches())

    def images_at(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(self._images, torch.Tensor) and not self._images.decoded():
            return self._images.some(idx)  # a gallery's few images: no need to decode the whole split
        return self.images.index_select(0, idx.to(self.images.device)).cpu()

    def in_order(
        self, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in self.chunks(batch_size, rank, world):
            yield self.images[chunk[0] : chunk[-1] + 1].to(self.device), torch.tensor(chunk)

    def _batches(self) -> Iterator[Batch]:
        images, labels, device = self.images, self.labels, self.device
        # index_select, not images[i]: ~15x faster for uint8 on the CPU (38 us vs 540 us at batch 256)
        if images.device == device:  # the common case (CPU, or the whole set on the GPU): no copies
            for idx in self.order.batches():
                i = idx if idx.device == images.device else idx.to(images.device)
                yield images.index_select(0, i), labels.index_select(0, i), idx
            return
        for idx in self.order.batches():  # on the host, trained on a GPU: copy each batch asynchronously
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), idx


class _Indexed(Dataset):
    """Adds the sample index to each item so augmentation and reports can use it."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.ds[i][:2]
        y = torch.as_tensor(y)
        return x, (y.long() if y.ndim == 0 else y.float()), i  # a class index, or a multi-label 0/1 row

    def __getitems__(self, idx: list[int]) -> Any:
        """A whole batch in the worker: a dataset that decodes batches (kiln's files) fills one array, with
        no per-sample collation; any other dataset is fetched sample by sample, as the DataLoader would."""
        batch = getattr(self.ds, "batch", None)
        if batch is None:
            return [self[i] for i in idx]
        x, y = batch(idx)
        return _Batched((x, y, torch.as_tensor(idx)))


class _Batched(tuple):  # type: ignore[type-arg]
    """A batch already assembled in the worker (collation passes it through)."""


def _collate(data: Any) -> Any:
    return tuple(data) if isinstance(data, _Batched) else default_collate(data)


class _OrderSampler:
    def __init__(self, order: EpochOrder) -> None:
        self.order = order

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.order.batches():
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.order)


class StreamLoader(_Resumable):
    """A DataLoader with worker processes over a Dataset that decodes per sample, for data that does not
    fit in memory. Same batches, in the same order, as MemoryLoader for the same seed."""

    def __init__(
        self,
        ds: Any,
        labels_of: Callable[[], torch.Tensor],
        order: EpochOrder,
        device: torch.device,
        workers: int,
        ids: list[str] | None = None,
    ) -> None:
        self.order, self.device, self.ids, self._labels_of = order, device, ids, labels_of
        self.loader = DataLoader(
            _Indexed(ds),
            batch_sampler=_OrderSampler(order),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    @cached_property
    def labels(self) -> torch.Tensor:
        """Read when asked (head_init): a user's Dataset gives its labels only by loading every item."""
        return self._labels_of()

    @property
    def raw_labels(self) -> torch.Tensor:
        return self.labels

    def materialize(self) -> None:
        """Nothing to do: a stream decodes as it goes."""

    def __iter__(self) -> Iterator[Batch]:
        return self._track(self._batches())

    def images_at(self, idx: torch.Tensor) -> torch.Tensor:
        ds = self.loader.dataset
        return torch.stack([torch.as_tensor(ds[int(i)][0]) for i in idx])

    def in_order(
        self, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.loader.dataset,
            batch_sampler=self.chunks(batch_size, rank, world),
            num_workers=self.loader.num_workers,
            collate_fn=_collate,
        )
        for x, _, idx in loader:
            yield x.to(self.device), idx

    def _batches(self) -> Iterator[Batch]:
        non_blocking = self.device.type == "cuda"
        for x, y, idx in self.loader:
            yield (
                x.to(self.device, non_blocking=non_blocking),
                y.to(self.device, non_blocking=non_blocking),
                idx,
            )
