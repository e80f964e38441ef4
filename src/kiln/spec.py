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
from typing import Any

from kiln.errors import KilnError

SCALE = "0-255 uint8 -> 0-1"  # how pixels are scaled before mean/std, as every record says


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
class Preprocess:
    """What a trained model needs to see the input it saw in training: the geometry (``spec``) and the
    per-channel mean/std (0..1 scale). The one record export, serving, ``kiln predict`` and model rebuilding
    read; a checkpoint's ``preprocess`` and every ``preprocess.json`` hold its ``to_json()``."""

    spec: ImageSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input tensor, without the batch dimension."""
        return (self.spec.channels, *self.spec.size)

    def to_json(self) -> dict[str, Any]:
        return {
            "in_channels": self.spec.channels,
            "image_size": list(self.spec.size),
            **self.spec.record(),
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": SCALE,
        }

    @classmethod
    def from_json(cls, record: Any, source: str = "the preprocessing record") -> Preprocess:
        """Read a record back (a checkpoint's, a preprocess.json, a model.json's). A damaged or incomplete
        record is an error naming ``source``."""
        try:
            channels = int(record["in_channels"])
            height, width = (int(v) for v in record["image_size"])
            spec = ImageSpec(
                channels,
                (height, width),
                str(record["resize"]),
                float(record["crop_pct"]),
                str(record["interpolation"]),
            )
            mean = tuple(float(v) for v in record["mean"])
            std = tuple(float(v) for v in record["std"])
        except (KeyError, TypeError, ValueError) as e:
            raise KilnError(f"{source}: not a kiln preprocessing record ({type(e).__name__}: {e})") from None
        if spec.resize not in ("none", "squash", "crop") or spec.interpolation not in ("bilinear", "bicubic"):
            raise KilnError(
                f"{source}: unknown resize {spec.resize!r} or interpolation {spec.interpolation!r}"
            )
        if len(mean) != channels or len(std) != channels or min(std, default=1.0) <= 0:
            raise KilnError(f"{source}: mean/std need {channels} values each (std > 0)")
        return cls(spec, mean, std)

    def preset(self, source: str = "the checkpoint") -> Preset:
        """As the preprocessing of pretrained weights, for building data the way the model was trained."""
        return Preset(
            source, self.spec.size, self.spec.crop_pct, self.spec.interpolation, self.mean, self.std
        )


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

    @property
    def channels(self) -> int | None:
        """The channels the weights take, when their statistics say (3 for ImageNet weights)."""
        return len(self.mean) if self.mean is not None else None
