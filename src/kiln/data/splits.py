"""``Split``: the one interface every data source produces. A new source is one new class (or reuses one
of these three); nothing else in kiln asks which kind of split it holds.

- ``TensorSplit``: images already in memory as uint8 ``[N, C, H, W]`` (digits, torchvision datasets)
- ``FileSplit``: image files not yet decoded, with labels (folder and CSV sources)
- ``DatasetSplit``: a user's ``torch.utils.data.Dataset`` (always streamed)
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from kiln.data.decode import presized, probe_file, scan_files
from kiln.data.items import Decoded, FileItems, TensorItems, adapt, multi_hot
from kiln.errors import DataError
from kiln.spec import ImageSpec


class Split(ABC):
    """Samples of one split (train, val or test) and how to get their pixels."""

    ids: list[str]  # per sample: file path or "source[i]", for reports and error messages
    in_memory = False  # already decoded (arrays from a library): the stream path has nothing to gain
    labels_listed = True  # the labels come with the sample list (a user's Dataset loads every item for them)

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def labels(self) -> list[int]: ...

    @abstractmethod
    def subset(self, index: Sequence[int]) -> Split: ...

    @abstractmethod
    def probe(self, channels: int | None) -> tuple[int, tuple[int, int]]:
        """(channels, (H, W)) of the stored images: the first one's, for files of any size."""

    def memory_bytes(self, spec: ImageSpec, train: bool) -> int | None:
        """Size of the split decoded into memory; None when it can only be streamed."""
        return len(self) * spec.channels * math.prod(spec.stored(train))

    @property
    def multi_label(self) -> bool:
        """Each sample has any number of labels (a tuple of class indices) instead of one."""
        return False

    def label_tensor(self) -> torch.Tensor:
        """The labels for training: int64 [N], or (multi-label) 0/1 float32 [N, K]."""
        return torch.tensor(self.labels, dtype=torch.int64)

    @abstractmethod
    def to_memory(
        self, spec: ImageSpec, cache_dir: Path | None, workers: int, train: bool, what: str = "images"
    ) -> Decoded:
        """All images as stored (``ImageSpec.stored``), decoded once and cached on disk for files."""

    @abstractmethod
    def dataset(self, spec: ImageSpec, train: bool) -> Dataset:
        """The stream path: a Dataset whose items are (image tensor as stored, label)."""

    def extents(self, spec: ImageSpec, train: bool) -> torch.Tensor:
        """The (h, w) each stored image fills (a train photo on its canvas), without decoding."""
        return torch.tensor([spec.stored(train)] * len(self), dtype=torch.int32).view(-1, 2)

    @abstractmethod
    def fingerprint(self, h: Any) -> None:
        """Feed what identifies the samples (files and labels, or pixels) into the hash ``h``."""

    def content_key(self, spec: ImageSpec, train: bool) -> str | None:
        """A key for the stored pixels of every sample, in order (cached features are keyed by it); None
        when nothing stable identifies them (a user's Dataset may change what it returns)."""
        return None

    def scan(self, spec: ImageSpec, workers: int) -> list[tuple[int, str]]:
        """Unreadable or misshapen samples as (index, message); only files can be bad."""
        return []


@dataclass
class TensorSplit(Split):
    images: torch.Tensor  # uint8 [N, C, H, W]
    targets: torch.Tensor  # int64 [N]
    ids: list[str] = field(default_factory=list)
    in_memory = True

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def labels(self) -> list[int]:
        return self.targets.tolist()

    def subset(self, index: Sequence[int]) -> TensorSplit:
        i = torch.as_tensor(list(index), dtype=torch.int64)
        return TensorSplit(self.images[i], self.targets[i], [self.ids[j] for j in i.tolist()])

    def probe(self, channels: int | None) -> tuple[int, tuple[int, int]]:
        height, width = self.images.shape[2:]
        return channels or int(self.images.shape[1]), (int(height), int(width))

    def to_memory(
        self, spec: ImageSpec, cache_dir: Path | None, workers: int, train: bool, what: str = "images"
    ) -> Decoded:
        return adapt(self.images, spec, train)

    def dataset(self, spec: ImageSpec, train: bool) -> Dataset:
        return TensorItems(adapt(self.images, spec, train)[0], self.targets)

    def extents(self, spec: ImageSpec, train: bool) -> torch.Tensor:
        return adapt(self.images[:1], spec, train)[1].expand(len(self), 2)

    def fingerprint(self, h: Any) -> None:
        h.update(self.images.numpy().tobytes())
        h.update(self.targets.numpy().tobytes())

    def content_key(self, spec: ImageSpec, train: bool) -> str | None:
        h = hashlib.sha256(f"{spec}|{train}|{tuple(self.images.shape)}".encode())
        h.update(self.images.contiguous().numpy().tobytes())
        return h.hexdigest()[:32]


@dataclass
class FileSplit(Split):
    paths: list[Path]
    file_labels: list[int] | list[tuple[int, ...]]  # a class index, or (multi-label) a tuple of them
    where: list[str] = field(default_factory=list)  # per sample: "file" or "file.csv:row" for error messages
    num_classes: int | None = None  # multi-label: the labels are tuples of class indices out of this many

    def __post_init__(self) -> None:
        self.ids = [str(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> list[int]:
        return list(self.file_labels)  # type: ignore[arg-type]

    @property
    def multi_label(self) -> bool:
        return self.num_classes is not None

    def label_tensor(self) -> torch.Tensor:
        if self.num_classes is None:
            return super().label_tensor()
        return multi_hot(self.file_labels, self.num_classes)  # type: ignore[arg-type]

    def subset(self, index: Sequence[int]) -> FileSplit:
        where = [self.where[i] for i in index] if self.where else []
        labels = [self.file_labels[i] for i in index]
        paths = [self.paths[i] for i in index]
        return FileSplit(paths, labels, where, self.num_classes)  # type: ignore[arg-type]

    def probe(self, channels: int | None) -> tuple[int, tuple[int, int]]:
        """The first readable image's (a broken first file is reported with the others, by the scan or the
        decode, naming it)."""
        first: DataError | None = None
        for path in self.paths[:50]:
            try:
                return probe_file(path, channels)
            except DataError as e:
                first = first or e
        raise first or DataError("the split has no images")

    def to_memory(
        self, spec: ImageSpec, cache_dir: Path | None, workers: int, train: bool, what: str = "images"
    ) -> Decoded:
        from kiln.data.cache import load_images

        return load_images(self.paths, spec, train, cache_dir, workers, what)

    def dataset(self, spec: ImageSpec, train: bool) -> Dataset:
        return FileItems(self.paths, self.label_tensor(), spec, train)

    def extents(self, spec: ImageSpec, train: bool) -> torch.Tensor:
        if not (train and spec.resize == "crop"):
            return super().extents(spec, train)
        sizes = [probe_file(p, spec.channels)[1] for p in self.paths]  # headers only
        return torch.tensor([presized(h, w, spec, True) for h, w in sizes], dtype=torch.int32).view(-1, 2)

    def fingerprint(self, h: Any) -> None:
        h.update("\n".join(f"{p}|{y}" for p, y in zip(self.paths, self.file_labels, strict=True)).encode())

    def content_key(self, spec: ImageSpec, train: bool) -> str | None:
        from kiln.data.cache import image_key

        return image_key(self.paths, spec, train)  # the files with their sizes and mtimes

    def scan(self, spec: ImageSpec, workers: int) -> list[tuple[int, str]]:
        return scan_files(self.paths, spec, workers)


@dataclass
class DatasetSplit(Split):
    ds: Any  # a torch Dataset: items (tensor [C, H, W], label)
    ids: list[str] = field(default_factory=list)  # per item, for reports: "MyDataset[i]" of the whole dataset
    labels_listed = False

    def __post_init__(self) -> None:
        self.ids = self.ids or [f"{type(self.ds).__name__}[{i}]" for i in range(len(self.ds))]

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def labels(self) -> list[int]:
        return [int(self.ds[i][1]) for i in range(len(self.ds))]

    def subset(self, index: Sequence[int]) -> DatasetSplit:
        return DatasetSplit(Subset(self.ds, list(index)), [self.ids[i] for i in index])

    def probe(self, channels: int | None) -> tuple[int, tuple[int, int]]:
        x = self.ds[0][0]
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise DataError(f"data.dataset: items must be (tensor [C,H,W], label); got {type(x).__name__}")
        return int(x.shape[0]), (int(x.shape[1]), int(x.shape[2]))

    def memory_bytes(self, spec: ImageSpec, train: bool) -> int | None:
        return None  # a user's Dataset may transform on the fly: always streamed

    def to_memory(
        self, spec: ImageSpec, cache_dir: Path | None, workers: int, train: bool, what: str = "images"
    ) -> Decoded:
        raise DataError("data.loader=memory: a custom Dataset is always streamed; use data.loader=auto")

    def dataset(self, spec: ImageSpec, train: bool) -> Dataset:
        return self.ds

    def fingerprint(self, h: Any) -> None:
        h.update(f"{type(self.ds).__name__}:{len(self.ds)}".encode())


def fingerprint(splits: Sequence[Split | None], classes: list[str]) -> str:
    """A hash of the sample lists, labels and classes (recorded in run_info.json)."""
    h = hashlib.sha256()
    for s in splits:
        if s is not None:
            s.fingerprint(h)
    h.update(repr(classes).encode())
    return h.hexdigest()[:16]


@dataclass
class RawSplits:
    """What a source returns: train (required), val and test (optional), and class names in label order."""

    train: Split
    val: Split | None
    test: Split | None
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # bad samples left out (data.on_bad_sample=skip)
    notes: list[str] = field(default_factory=list)  # things left out that are not problems (non-image files)
