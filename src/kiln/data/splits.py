"""``Split``: the one interface every data source produces. A new source is one new class (or reuses one
of these three); nothing else in kiln asks which kind of split it holds.

- ``TensorSplit``: images already in memory as uint8 ``[N, C, H, W]`` (digits, torchvision datasets)
- ``FileSplit``: image files not yet decoded, with labels (folder and CSV sources)
- ``DatasetSplit``: a user's ``torch.utils.data.Dataset`` (always streamed)
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from kiln.data.decode import open_image, probe_file, scan_files
from kiln.errors import DataError


@dataclass(frozen=True)
class ImageSpec:
    """How a dataset's images are stored for training: channels and (H, W); ``resize``: files of other
    sizes are resized to it (data.image_size set), else they must all have it."""

    channels: int
    size: tuple[int, int]
    resize: bool


class Split(ABC):
    """Samples of one split (train, val or test) and how to get their pixels."""

    ids: list[str]  # per sample: file path or "source[i]", for reports and error messages
    in_memory = False  # already decoded (arrays from a library): the stream path has nothing to gain

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

    @abstractmethod
    def memory_bytes(self, spec: ImageSpec) -> int | None:
        """Size of the split decoded into memory; None when it can only be streamed."""

    @abstractmethod
    def to_memory(self, spec: ImageSpec, cache_dir: Path | None, workers: int) -> torch.Tensor:
        """All images as one uint8 ``[N, C, H, W]`` tensor (decoded once, cached on disk for files)."""

    @abstractmethod
    def dataset(self, spec: ImageSpec) -> Dataset:
        """The stream path: a Dataset whose items are (image tensor [C, H, W], label)."""

    @abstractmethod
    def fingerprint(self, h: Any) -> None:
        """Feed what identifies the samples (files and labels, or pixels) into the hash ``h``."""

    def scan(self, spec: ImageSpec, workers: int) -> list[tuple[int, str]]:
        """Unreadable or misshapen samples as (index, message); only files can be bad."""
        return []


@dataclass
class TensorSplit(Split):
    images: torch.Tensor  # uint8 [N, C, H, W]
    label_tensor: torch.Tensor  # int64 [N]
    ids: list[str] = field(default_factory=list)
    in_memory = True

    def __len__(self) -> int:
        return int(self.label_tensor.shape[0])

    @property
    def labels(self) -> list[int]:
        return self.label_tensor.tolist()

    def subset(self, index: Sequence[int]) -> TensorSplit:
        i = torch.as_tensor(list(index), dtype=torch.int64)
        return TensorSplit(self.images[i], self.label_tensor[i], [self.ids[j] for j in i.tolist()])

    def probe(self, channels: int | None) -> tuple[int, tuple[int, int]]:
        return channels or int(self.images.shape[1]), tuple(self.images.shape[2:])  # type: ignore[return-value]

    def memory_bytes(self, spec: ImageSpec) -> int | None:
        return len(self) * spec.channels * spec.size[0] * spec.size[1]

    def to_memory(self, spec: ImageSpec, cache_dir: Path | None, workers: int) -> torch.Tensor:
        return adapt(self.images, spec)

    def dataset(self, spec: ImageSpec) -> Dataset:
        return _Pairs(adapt(self.images, spec), self.label_tensor)

    def fingerprint(self, h: Any) -> None:
        h.update(self.images.numpy().tobytes())
        h.update(self.label_tensor.numpy().tobytes())


@dataclass
class FileSplit(Split):
    paths: list[Path]
    file_labels: list[int]
    where: list[str] = field(default_factory=list)  # per sample: "file" or "file.csv:row" for error messages

    def __post_init__(self) -> None:
        self.ids = [str(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> list[int]:
        return list(self.file_labels)

    def subset(self, index: Sequence[int]) -> FileSplit:
        where = [self.where[i] for i in index] if self.where else []
        return FileSplit([self.paths[i] for i in index], [self.file_labels[i] for i in index], where)

    def probe(self, channels: int | None) -> tuple[int, tuple[int, int]]:
        return probe_file(self.paths[0], channels)

    def memory_bytes(self, spec: ImageSpec) -> int | None:
        return len(self) * spec.channels * spec.size[0] * spec.size[1]

    def to_memory(self, spec: ImageSpec, cache_dir: Path | None, workers: int) -> torch.Tensor:
        from kiln.data.cache import load_images

        return load_images(self.paths, spec.channels, spec.size, spec.resize, cache_dir, workers)

    def dataset(self, spec: ImageSpec) -> Dataset:
        return _Files(self.paths, self.file_labels, spec)

    def fingerprint(self, h: Any) -> None:
        h.update("\n".join(f"{p}|{y}" for p, y in zip(self.paths, self.file_labels, strict=True)).encode())

    def scan(self, spec: ImageSpec, workers: int) -> list[tuple[int, str]]:
        return scan_files(self.paths, spec.channels, spec.size, spec.resize, workers)


@dataclass
class DatasetSplit(Split):
    ds: Any  # a torch Dataset: items (tensor [C, H, W], label)

    def __post_init__(self) -> None:
        self.ids = [f"{type(self.ds).__name__}[{i}]" for i in range(len(self.ds))]

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def labels(self) -> list[int]:
        return [int(self.ds[i][1]) for i in range(len(self.ds))]

    def subset(self, index: Sequence[int]) -> DatasetSplit:
        return DatasetSplit(Subset(self.ds, list(index)))

    def probe(self, channels: int | None) -> tuple[int, tuple[int, int]]:
        x = self.ds[0][0]
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise DataError(f"data.dataset: items must be (tensor [C,H,W], label); got {type(x).__name__}")
        return int(x.shape[0]), (int(x.shape[1]), int(x.shape[2]))

    def memory_bytes(self, spec: ImageSpec) -> int | None:
        return None  # a user's Dataset may transform on the fly: always streamed

    def to_memory(self, spec: ImageSpec, cache_dir: Path | None, workers: int) -> torch.Tensor:
        raise DataError("data.loader=memory: a custom Dataset is always streamed; use data.loader=auto")

    def dataset(self, spec: ImageSpec) -> Dataset:
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


def adapt(images: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """Channel conversion and resize for images already in memory (digits, torchvision)."""
    if images.shape[1] != spec.channels:
        if spec.channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R 601-2 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if spec.resize and tuple(images.shape[2:]) != spec.size:
        images = torch.nn.functional.interpolate(
            images.float(), size=spec.size, mode="bilinear", antialias=True
        )
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


class _Pairs(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class _Files(Dataset):
    """Decodes one file per item (the stream path)."""

    def __init__(self, paths: list[Path], labels: list[int], spec: ImageSpec) -> None:
        self.paths, self.labels, self.spec = paths, labels, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        size = self.spec.size if self.spec.resize else None
        arr = open_image(self.paths[i], self.spec.channels, size)
        return torch.from_numpy(arr.copy()), self.labels[i]


@dataclass
class RawSplits:
    """What a source returns: train (required), val and test (optional), and class names in label order."""

    train: Split
    val: Split | None
    test: Split | None
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # bad samples left out (data.on_bad_sample=skip)
