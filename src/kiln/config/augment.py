"""``data.augment``: the batch-level CIFAR-style augmentations and the per-image photo recipes, each with
torchvision's parameter semantics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kiln.config.base import Strict as _Strict


def _true_is_default(v: Any) -> Any:
    return {} if v is True else None if v is False else v


class ResizedCropConfig(_Strict):
    """torchvision's RandomResizedCrop: an area share in ``scale`` of the whole photo, a log-uniform aspect
    in ``ratio``, resized to data.image_size."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


class JitterConfig(_Strict):
    """torchvision's ColorJitter: factors uniform in [1 - v, 1 + v]; hue a shift in [-hue, hue] (max 0.5)."""

    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.4, ge=0)
    hue: float = Field(0.0, ge=0, le=0.5)


class ErasingConfig(_Strict):
    """torchvision's RandomErasing, after normalisation (erased = the mean)."""

    p: float = Field(0.25, ge=0, le=1)
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)


class AugmentConfig(_Strict):
    # CIFAR-style, drawn per batch from (seed, epoch, step)
    crop_padding: int = Field(0, ge=0)  # pixels of reflect padding before a random crop; 0 = off
    hflip: bool = False
    alternating_flip: bool = False  # airbench: flip every other epoch per sample instead of at random
    cutout: int = Field(0, ge=0)  # side of a square zeroed at a random place; 0 = off
    # photo recipes (timm, torchvision references), drawn per image from (seed, view)
    random_resized_crop: ResizedCropConfig | None = None  # `true`: scale (0.08, 1), ratio (3/4, 4/3)
    color_jitter: JitterConfig | None = None  # a number v: brightness = contrast = saturation = v
    auto_augment: Literal["none", "trivial", "rand"] = "none"  # TrivialAugmentWide or RandAugment
    rand_ops: int = Field(2, ge=1)  # RandAugment: ops per image ...
    rand_magnitude: int = Field(9, ge=0, le=30)  # ... at this magnitude bin (of 31)
    random_erasing: ErasingConfig | None = None  # a number p: the probability, other values default
    views: int | None = Field(
        None, gt=0
    )  # distinct draws per image that epochs cycle through (None: new each epoch)
    # mixing pairs of a batch
    mixup: float = Field(0.0, ge=0)  # Beta(alpha, alpha) mixing of image pairs and their targets; 0 = off
    cutmix: float = Field(0.0, ge=0)  # Beta(alpha, alpha) box pasting; with mixup too, each batch picks one

    @field_validator("random_resized_crop", mode="before")
    @classmethod
    def _rrc(cls, v: Any) -> Any:
        return _true_is_default(v)

    @field_validator("color_jitter", mode="before")
    @classmethod
    def _jitter(cls, v: Any) -> Any:
        v = _true_is_default(v)
        return {"brightness": v, "contrast": v, "saturation": v} if isinstance(v, (int, float)) else v

    @field_validator("random_erasing", mode="before")
    @classmethod
    def _erasing(cls, v: Any) -> Any:
        v = _true_is_default(v)
        return {"p": v} if isinstance(v, (int, float)) else v

    @property
    def photo(self) -> bool:
        """Any of the per-image photo augmentations is on."""
        return bool(
            self.random_resized_crop
            or self.color_jitter
            or self.auto_augment != "none"
            or self.random_erasing
        )

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        if self.photo and (self.crop_padding or self.cutout or self.alternating_flip):
            raise ValueError(
                "crop_padding, cutout and alternating_flip (CIFAR-style, per batch) do not "
                "combine with random_resized_crop, color_jitter, auto_augment or random_erasing "
                "(photo recipes, per image); use one family"
            )
        return self
