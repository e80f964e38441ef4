"""Mixing pairs of a training batch: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019). Sample i is
blended with sample ``perm[i]``; the loss follows with ``Mix.lam`` (see ``engine.loop.mixed_loss``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from kiln.data.geometry import box_mask


@dataclass(frozen=True)
class Mix:
    """Pairs mixed in a training batch: sample i was blended with sample ``perm[i]``; ``lam`` is the share
    of sample i. The loss is ``lam * loss(logits, y) + (1 - lam) * loss(logits, y[perm])``."""

    lam: float
    perm: torch.Tensor


def mixup(x: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, Mix]:
    return torch.lerp(x[perm], x, lam), Mix(lam, perm)  # lam * x + (1 - lam) * x[perm]


def cutmix(x: torch.Tensor, lam: float, perm: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, Mix]:
    """Paste a box of ``x[perm]`` covering about ``1 - lam`` of the image, centred uniformly at random and
    clipped to the image (as torchvision's and timm's CutMix); ``lam`` becomes the share actually kept."""
    h, w = x.shape[2:]
    cut = (1 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = rng.randrange(h), rng.randrange(w)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    box = torch.tensor([[left, top, right - left, bottom - top]], dtype=torch.float32)
    inside = box_mask(box, (h, w), x.device)
    kept = 1.0 - (bottom - top) * (right - left) / (h * w)
    return torch.where(inside, x[perm], x), Mix(kept, perm)
