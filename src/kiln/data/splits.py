"""The plain containers every data source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset


@dataclass
class ImageSet:
    """Decoded images in memory: uint8 ``[N, C, H, W]`` plus int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str] | None = None  # file paths or sample indices, for reports

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        ids = [self.ids[i] for i in index.tolist()] if self.ids is not None else None
        return ImageSet(self.images[index], self.labels[index], ids)


@dataclass
class FileSet:
    """Image files not yet decoded, with their labels (folder and CSV sources)."""

    paths: list[Path]
    labels: list[int]
    where: list[str] = field(default_factory=list)  # per sample: "file" or "file.csv:row" for error messages

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: list[int]) -> FileSet:
        where = [self.where[i] for i in index] if self.where else []
        return FileSet([self.paths[i] for i in index], [self.labels[i] for i in index], where)


Split = ImageSet | FileSet | Dataset


@dataclass
class RawSplits:
    """What a source returns: train (required), val and test (optional), and class names in label order."""

    train: Split
    val: Split | None
    test: Split | None
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # bad samples left out (data.on_bad_sample=skip)
