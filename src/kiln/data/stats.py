"""Per-channel mean and std: the config's, the pretrained weights', or measured on the train images."""

from __future__ import annotations

import torch

from kiln.config import DataConfig
from kiln.errors import DataError
from kiln.spec import Preset


def mean_std(
    cfg: DataConfig, preset: Preset | None, train: tuple[torch.Tensor, torch.Tensor] | None, channels: int
) -> tuple[list[float], list[float]]:
    """The config's mean/std; else the pretrained weights'; else measured on the decoded train images (over
    each photo's own extent on its canvas); else 0.5 (a streamed train split)."""
    if cfg.mean is not None:
        mean, std = list(cfg.mean), list(cfg.std or ())
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"data.mean/data.std: need {channels} values (one per channel), got {len(mean)}")
        return mean, std
    if preset is not None and preset.mean is not None and preset.std is not None:
        mean, std = list(preset.mean), list(preset.std)
        if len(mean) != channels:  # data.channels=1 with RGB weights: the stem sums its RGB filters (timm)
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        return mean, std
    if train is None:
        return [0.5] * channels, [0.5] * channels
    return measure(*train(), channels)  # decodes the train images (once; they are cached)


def measure(images: torch.Tensor, extents: torch.Tensor, channels: int) -> tuple[list[float], list[float]]:
    whole = bool((extents == torch.tensor(images.shape[2:], dtype=extents.dtype)).all())
    rows = torch.arange(images.shape[2])[None, :, None]
    cols = torch.arange(images.shape[3])[None, None, :]
    # float64 sums over chunks: exact enough, and no N x C x H x W float copy of the whole set in memory
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for i in range(0, len(images), 4096):
        x = images[i : i + 4096].to(torch.float64) / 255.0
        if whole:
            count += x.shape[0] * x.shape[2] * x.shape[3]
        else:
            e = extents[i : i + 4096]
            inside = (rows < e[:, :1, None]) & (cols < e[:, 1:, None])
            x, count = x * inside[:, None], count + int(inside.sum())
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
