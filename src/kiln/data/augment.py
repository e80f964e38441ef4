"""Whole-batch preprocessing on the batch's device: uint8 -> float, the view the model sees, normalise,
augment, then mix pairs. The one place where pixels become model inputs, for training, evaluation,
``kiln predict`` and export checks alike.

No per-sample Python. Two ways of drawing random numbers, both resumable exactly:

- CIFAR-style augmentations (pad-and-crop, flips, cutout) draw for the batch at once from a generator
  seeded by (seed, epoch, step);
- the photo pipeline (random-resized crop, flip, colour jitter, TrivialAugment/RandAugment, random erasing)
  draws for every image of the split at once per *view* (seed, view; a view is an epoch, or with
  ``data.augment.views: K`` epoch mod K), so an image's augmentation does not depend on the batch it
  lands in: a frozen backbone can compute each (image, view) once and train the head on it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kiln.config import AugmentConfig
from kiln.data import geometry, photometric
from kiln.data.mixing import Mix, cutmix, mixup
from kiln.spec import ImageSpec


def seeded_generator(device: torch.device, *keys: int) -> torch.Generator:
    # Mix the keys into one 63-bit seed; distinct (seed, epoch, step) triples give distinct streams.
    s = 0x9E3779B97F4A7C15
    for k in keys:
        s = (s ^ (k + 0x9E3779B97F4A7C15 + (s << 6) + (s >> 2))) & 0x7FFF_FFFF_FFFF_FFFF
    return torch.Generator(device=device).manual_seed(s)


PHOTO_STREAM = 0x50484F54  # a key of its own for the per-image draws, apart from the per-batch ones


@dataclass(frozen=True)
class ViewParams:
    """One view's augmentation of every image of the split (row i: image i)."""

    boxes: torch.Tensor | None  # [N, 4] random-resized-crop boxes (left, top, w, h), None: the centre view
    flip: torch.Tensor | None  # [N] bool
    jitter: torch.Tensor | None  # [N, 4] brightness, contrast, saturation, hue
    order: list[int]  # the jitter's order for this view
    ops: torch.Tensor | None  # [N, k] TrivialAugment/RandAugment op indices ...
    mags: torch.Tensor | None  # ... and their signed magnitudes
    erase: torch.Tensor | None  # [N, 4] random-erasing boxes at the model's input size (w = 0: none)


def photo_pipeline(augment: AugmentConfig, spec: ImageSpec | None) -> bool:
    """Whether training takes the photo pipeline (per-image crops and augmentations drawn from (seed, view))
    rather than the CIFAR-style batch augmentations: a photo augmentation is on, or photos are stored whole
    and cropped."""
    return augment.photo or (spec is not None and spec.resize == "crop")


class BatchTransform:
    """uint8 ``[B, C, H, W]`` batch as stored -> normalised float batch the model takes; for training also
    augmented and mixed. ``spec``: the stored geometry (photos: evaluation crops the centre of the stored
    square); ``extents``: the (h, w) each train image fills, for crops drawn inside the whole photo."""

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        augment: AugmentConfig,
        seed: int,
        rank: int = 0,
        spec: ImageSpec | None = None,
        extents: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        train_size: tuple[int, int] | None = None,
    ) -> None:
        std_t = torch.tensor(std, dtype=torch.float32)
        # (x/255 - mean)/std folded into one multiply-add: scale = 1/(255 std), shift = -mean/std
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)
        self.augment, self.seed = augment, seed  # the augmentation settings (data.augment) and run.seed
        self.rank_key = (rank,) if rank else ()  # under DDP each rank draws its own batch augmentations
        self.mean, self.std = list(mean), list(std)
        self.spec, self._extents = spec, extents
        self.train_size = train_size or (spec.size if spec is not None else None)  # photo training crops
        self.photo = photo_pipeline(augment, spec)
        self._views: dict[int, ViewParams] = {}  # a pure function of (seed, view): cached, never stale

    @property
    def extents(self) -> torch.Tensor | None:
        """The (h, w) each train image fills on its canvas; read (from the decoded images or the files'
        headers) only when a photo augmentation first needs it."""
        if callable(self._extents):
            self._extents = self._extents()
        return self._extents

    # ---- evaluation: the centre view, normalised

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:  # a custom dataset that hands over float tensors already scaled
            return x.float()
        return self._scaled(x.float())

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Floats on the 0..255 scale -> normalised, in place."""
        if self.scale.device != x.device:
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        return x.mul_(self.scale).add_(self.shift)  # in place on a fresh copy: ~2x addcmul's speed

    def eval_view(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input size from the centre of each stored evaluation image (photos are stored at
        ``resize_size``; evaluation takes the centre ``size``, as timm's crop_pct)."""
        if self.spec is None or tuple(x.shape[2:]) == self.spec.size:
            return x
        (h, w), (sh, sw) = self.spec.size, x.shape[2:]
        top, left = (sh - h) // 2, (sw - w) // 2
        return x[:, :, top : top + h, left : left + w]

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.eval_view(x))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised floats back to the 0..1 scale (for showing images)."""
        return (x - self.shift.to(x.device)) / (self.scale.to(x.device) * 255.0)

    # ---- training

    def train(
        self, x: torch.Tensor, idx: torch.Tensor, epoch: int, step: int
    ) -> tuple[torch.Tensor, Mix | None]:
        """A training batch: augmented, and with data.augment.mixup/cutmix its pairs mixed."""
        x = self.augmented(x, idx, epoch, step)
        a = self.augment
        if a.mixup <= 0 and a.cutmix <= 0:
            return x, None
        # seeded by (seed, epoch, step) like the augmentations, so resume draws the same pairs
        rng = random.Random(hash((self.seed, epoch, step)))
        perm = torch.randperm(
            x.shape[0], generator=seeded_generator(torch.device("cpu"), self.seed, epoch, step, 1)
        )
        perm = perm.to(x.device)
        if a.cutmix > 0 and (a.mixup <= 0 or rng.random() < 0.5):  # both on: each batch picks one
            return cutmix(x, rng.betavariate(a.cutmix, a.cutmix), perm, rng)
        return mixup(x, rng.betavariate(a.mixup, a.mixup), perm)

    def augmented(self, x: torch.Tensor, idx: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """Normalised and augmented, before any mixing of pairs."""
        if self.photo:
            return self.view(x, idx, self.view_of(epoch))
        x = self.normalize(x)
        a = self.augment
        if not (a.crop_padding or a.hflip or a.alternating_flip or a.cutout):
            return x
        g = seeded_generator(x.device, self.seed, epoch, step, *self.rank_key)
        if a.crop_padding:
            x = geometry.random_crop(x, a.crop_padding, g)
        if a.alternating_flip:
            # airbench: a per-sample coin decides epoch 0; afterwards each sample alternates, so every
            # image is seen both ways in any two consecutive epochs.
            base = ((idx.to(x.device) * 0x9E3779B1 + self.seed * 0x85EBCA6B) >> 16) % 2 == 1
            x = geometry.flip(x, base ^ bool(epoch % 2))
        elif a.hflip:
            x = geometry.flip(x, torch.rand(x.shape[0], generator=g, device=x.device) < 0.5)
        if a.cutout:
            x = geometry.cutout(x, a.cutout, g)
        return x

    def view_of(self, epoch: int) -> int:
        return epoch % self.augment.views if self.augment.views else epoch

    def view(self, x: torch.Tensor, idx: torch.Tensor, view: int) -> torch.Tensor:
        """Train images ``idx`` of the split as augmentation view ``view`` draws them (the photo pipeline)."""
        assert self.spec is not None and self.extents is not None, (
            "the photo pipeline needs the train extents"
        )
        p, i = self.view_params(view), idx.cpu()
        boxes = p.boxes[i] if p.boxes is not None else self.centre_boxes(self.extents[i])
        xf = geometry.resample(x.float(), boxes, self.train_size)  # type: ignore[arg-type]  # 0..255 scale
        if p.jitter is not None or p.ops is not None:
            xf = xf / 255
            if p.jitter is not None:
                xf = photometric.color_jitter(xf, p.jitter[i], p.order)
            if p.ops is not None:
                xf = photometric.auto_augment(xf, p.ops[i], p.mags[i])  # type: ignore[index]
            xf = xf * 255
        xf = self._scaled(xf)
        if p.flip is not None:
            xf = geometry.flip(xf, p.flip[i])
        if p.erase is not None:
            erased = geometry.box_mask(p.erase[i], self.train_size, xf.device)  # type: ignore[arg-type]
            xf = xf.masked_fill(erased, 0.0)
        return xf

    def train_centre(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Train images ``idx`` in the evaluation's view, normalised, unaugmented (data-dependent inits)."""
        if not self.photo:
            return self.normalize(x)
        assert self.spec is not None and self.extents is not None
        return self._scaled(
            geometry.resample(x.float(), self.centre_boxes(self.extents[idx.cpu()]), self.spec.size)
        )

    def centre_boxes(self, extents: torch.Tensor) -> torch.Tensor:
        """The evaluation view of each stored train photo: its centre at crop_pct of the shorter side."""
        assert self.spec is not None
        return geometry.centre_boxes(
            extents, self.spec.size, extents.min(1).values / min(self.spec.resize_size)
        )

    def view_params(self, view: int) -> ViewParams:
        if view not in self._views:
            if len(self._views) > 4:
                self._views.clear()
            self._views[view] = self._draw(view)
        return self._views[view]

    def _draw(self, view: int) -> ViewParams:
        assert self.spec is not None and self.extents is not None
        a, n, size = self.augment, len(self.extents), self.train_size
        g = seeded_generator(torch.device("cpu"), self.seed, view, PHOTO_STREAM)
        rrc = a.random_resized_crop
        boxes = geometry.rrc_boxes(self.extents, rrc.scale, rrc.ratio, g) if rrc else None
        flip = torch.rand(n, generator=g) < 0.5 if a.hflip else None
        cj = a.color_jitter
        jitter = (
            photometric.jitter_factors(n, cj.brightness, cj.contrast, cj.saturation, cj.hue, g)
            if cj
            else None
        )
        order = torch.randperm(4, generator=g).tolist()
        ops = mags = None
        if a.auto_augment != "none":
            ops, mags = photometric.draw_ops(n, a.auto_augment, a.rand_ops, a.rand_magnitude, size, g)
        re = a.random_erasing
        erase = geometry.erasing_boxes(n, size, re.p, re.scale, re.ratio, g) if re else None
        return ViewParams(boxes, flip, jitter, order, ops, mags, erase)
