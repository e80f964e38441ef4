"""What the stream path reads item by item (a ``Dataset`` per split), and ``adapt``: the sizing of images
already in memory (digits, torchvision arrays) with the arithmetic ``decode.open_image`` uses on files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from kiln.data.decode import decode_batch, open_image, presized
from kiln.errors import DataError
from kiln.spec import ImageSpec

Decoded = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, C, H, W], and the (h, w) each fills [N, 2]


def _resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(images.shape[2:]) == size:
        return images
    out = torch.nn.functional.interpolate(images.float(), size=size, mode=mode, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def adapt(images: torch.Tensor, spec: ImageSpec, train: bool) -> Decoded:
    """Channel conversion and the spec's geometry for images already in memory (digits, torchvision):
    the arithmetic of ``decode.open_image`` on uint8 tensors of one size."""
    if images.shape[1] != spec.channels:
        if spec.channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R 601-2 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    stored = spec.stored(train)
    if spec.resize == "squash":
        images = _resize(images, stored, spec.interpolation)
    elif spec.resize == "crop":
        h, w = presized(images.shape[2], images.shape[3], spec, train)
        images = _resize(images, (h, w), spec.interpolation)
        if train:  # the whole image, top-left on the canvas
            canvas = torch.zeros((images.shape[0], images.shape[1], *stored), dtype=torch.uint8)
            canvas[:, :, :h, :w] = images
            return canvas, torch.tensor([[h, w]] * len(images), dtype=torch.int32).view(-1, 2)
        top, left = (h - stored[0]) // 2, (w - stored[1]) // 2
        images = images[:, :, top : top + stored[0], left : left + stored[1]]
    elif tuple(images.shape[2:]) != spec.size:
        raise DataError(
            f"images are {tuple(images.shape[2:])}, not data.image_size {spec.size}; set data.resize"
        )
    images = images.contiguous()
    return images, torch.tensor([list(images.shape[2:])] * len(images), dtype=torch.int32).view(-1, 2)


class TensorItems(Dataset):
    """Images already in memory, one item each."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class FileItems(Dataset):
    """Decodes one file per item (the stream path), exactly as the memory path's cache does."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, spec: ImageSpec, train: bool) -> None:
        self.paths, self.labels, self.spec, self.train = paths, labels, spec, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        arr, _ = open_image(self.paths[i], self.spec, self.train)
        if not arr.flags.writeable:  # PIL's pixels as they are: read-only, which torch warns about
            arr = arr.copy()
        return torch.from_numpy(arr), self.labels[i]

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` decoded into one array (the memory path's decoder, a batch at a time)."""
        out, _ = decode_batch([self.paths[i] for i in idx], self.spec, self.train)
        return torch.from_numpy(out), self.labels[torch.as_tensor(idx)]


def multi_hot(labels: Sequence[tuple[int, ...]], num_classes: int) -> torch.Tensor:
    """Tuples of class indices as 0/1 rows: float32 [N, K] (what BCE and mixing take)."""
    out = torch.zeros((len(labels), num_classes), dtype=torch.float32)
    for row, classes in enumerate(labels):
        out[row, list(classes)] = 1.0
    return out
