"""``ImageSpec``: how a dataset's images are stored for training and evaluation, and what the model sees.

Three ways to get from files of any size to the model's input ``size`` (``data.resize``):

- ``none``: every image already has ``size`` (CIFAR, MNIST); a file of another size is an error.
- ``squash``: resized to ``size`` exactly (aspect ratio not kept).
- ``crop``: photos, as timm and torchvision's references do it. Evaluation resizes the shorter side to
  ``size / crop_pct`` (``resize_size``, 256 for 224 at crop_pct 0.875) and takes the centre ``size``; the
  cache stores that centre square of ``resize_size``. Training stores each photo whole at the same scale
  on a square canvas (photos longer than ``max_aspect`` shrink to fit), so random-resized crops can come
  from anywhere in it; the photo's extent on the canvas is recorded per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSpec:
    channels: int
    size: tuple[int, int]  # the model's input (H, W)
    resize: str = "none"  # none | squash | crop
    crop_pct: float = 1.0  # crop: the share of resize_size the evaluation crop keeps
    interpolation: str = "bilinear"  # bilinear | bicubic (antialiased when shrinking)
    max_aspect: float = 1.5  # crop: train photos up to this aspect ratio are stored whole at full scale

    @property
    def resize_size(self) -> tuple[int, int]:
        if self.resize != "crop":
            return self.size
        return round(self.size[0] / self.crop_pct), round(self.size[1] / self.crop_pct)

    def stored(self, train: bool) -> tuple[int, int]:
        """(H, W) of one stored image: the train canvas, or the evaluation square of ``resize_size``."""
        if self.resize != "crop" or not train:
            return self.resize_size
        side = math.ceil(max(self.resize_size) * self.max_aspect)
        return side, side

    def record(self) -> dict[str, object]:
        """The geometry half of preprocess.json and a checkpoint's ``preprocess``."""
        return {
            "resize": self.resize,
            "resize_size": list(self.resize_size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class Preset:
    """Preprocessing that pretrained weights bring (timm's pretrained_cfg, torchvision's weights, a kiln
    checkpoint's record, a safetensors file's metadata). Explicit config values win over it."""

    source: str  # where it came from, for the log
    image_size: tuple[int, int] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
