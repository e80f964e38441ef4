"""Geometric augmentations of whole batches, every random number drawn at once per batch (or per image for
the photo pipeline): random-resized crops resampled in one batched ``roi_align``, centre views, CIFAR-style
pad-and-crop, flips, cutout and random erasing.

Boxes are ``[N, 4]`` float tensors (left, top, width, height) in stored-pixel units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def rrc_boxes(
    extents: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for every image at once: up to ``attempts`` tries of an
    area share in ``scale`` and a log-uniform aspect in ``ratio`` that fit inside the image (h, w), the first
    that fits wins; none: the centre crop of the whole image with its aspect clamped to ``ratio``."""
    h, w = extents[:, 0].double(), extents[:, 1].double()
    n, log_r = len(extents), (math.log(ratio[0]), math.log(ratio[1]))
    target = (h * w)[:, None] * _uniform(g, (n, attempts), *scale).double()
    aspect = torch.exp(_uniform(g, (n, attempts), *log_r).double())
    cw, ch = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    ok = (cw > 0) & (ch > 0) & (cw <= w[:, None]) & (ch <= h[:, None])
    first = ok.double().argmax(1, keepdim=True)
    cw, ch = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0]
    u = torch.rand((n, 2), generator=g).double()
    top, left = torch.floor(u[:, 0] * (h - ch + 1)), torch.floor(u[:, 1] * (w - cw + 1))
    # fallback, as torchvision: the whole image, cut to the nearest allowed aspect, centred
    in_ratio = w / h
    fw = torch.where(in_ratio < ratio[0], w, torch.where(in_ratio > ratio[1], (h * ratio[1]).round(), w))
    fh = torch.where(in_ratio < ratio[0], (w / ratio[0]).round(), h)
    found = ok.any(1)
    cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
    top = torch.where(found, top, ((h - ch) / 2).floor())
    left = torch.where(found, left, ((w - cw) / 2).floor())
    return torch.stack([left, top, cw, ch], 1).float()


def centre_boxes(
    extents: torch.Tensor, size: tuple[int, int], scale: torch.Tensor | None = None
) -> torch.Tensor:
    """The centre ``size`` (times ``scale`` per image) of each image (h, w): what evaluation sees of a photo
    stored at the same scale (scale 1: the box is exactly ``size`` on whole pixels, a plain copy)."""
    h, w = extents[:, 0].float(), extents[:, 1].float()
    s = torch.ones_like(h) if scale is None else scale.float()
    bh, bw = size[0] * s, size[1] * s
    return torch.stack([((w - bw) / 2).floor(), ((h - bh) / 2).floor(), bw, bh], 1)


def resample(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box resized to ``size`` in one batched call: bilinear, and when a box is larger than
    ``size`` each output pixel averages the samples of its area (antialiasing), as ``roi_align`` does with
    an adaptive sampling ratio. A box of exactly ``size`` on whole pixels copies them unchanged."""
    from torchvision.ops import roi_align  # torchvision takes ~1 s to import: only runs that crop pay it

    left, top, bw, bh = boxes.to(x.device).unbind(1)
    rois = torch.stack(
        [torch.arange(len(x), device=x.device, dtype=x.dtype), left, top, left + bw, top + bh], 1
    )
    return roi_align(x, rois.to(x.dtype), size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Reflect-pad by ``pad`` px, then crop back to H x W at a random offset per sample."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # gather, then back to a plain contiguous [B, C, H, W] (odd strides crash some CPU conv kernels)
    return xp.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Zero (= the mean, after normalisation) a size x size square at a random centre per sample."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=g, device=x.device)
    cx = torch.randint(0, w, (b, 1, 1), generator=g, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return x.masked_fill(inside[:, None], 0.0)


def erasing_boxes(
    n: int,
    size: tuple[int, int],
    p: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's RandomErasing.get_params for ``n`` images of ``size``: with probability ``p`` a box of
    an area share in ``scale`` and a log-uniform aspect in ``ratio`` (the first of ``attempts`` that fits);
    images not erased get an empty box."""
    h, w = size
    erase = torch.rand(n, generator=g) < p
    area = h * w * _uniform(g, (n, attempts), *scale).double()
    aspect = torch.exp(_uniform(g, (n, attempts), math.log(ratio[0]), math.log(ratio[1])).double())
    eh, ew = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    ok = (eh < h) & (ew < w)
    first = ok.double().argmax(1, keepdim=True)
    eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
    u = torch.rand((n, 2), generator=g).double()
    top, left = torch.floor(u[:, 0] * (h - eh + 1)), torch.floor(u[:, 1] * (w - ew + 1))
    keep = erase & ok.any(1)
    return torch.stack([left, top, ew * keep, eh * keep], 1).float()


def box_mask(boxes: torch.Tensor, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[N, 1, H, W] True inside each image's box."""
    left, top, bw, bh = boxes.to(device)[:, :, None, None, None].unbind(1)
    ys = torch.arange(size[0], device=device)[None, None, :, None]
    xs = torch.arange(size[1], device=device)[None, None, None, :]
    return (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)
