"""Optimizers and per-step learning-rate schedules from the config, by registry name."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kiln.config import OptimizerConfig, SchedulerConfig


def build_optimizer(cfg: OptimizerConfig, params: list[nn.Parameter], fused: bool) -> torch.optim.Optimizer:
    extra = {"fused": True} if fused else {}  # one kernel for all params on CUDA
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **extra)  # fmt: skip
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **extra)


def lr_factor(cfg: SchedulerConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base LR at optimizer step ``s`` (0-based), warmup included.

    Defined by the configured total, not by where a run stops, so a resumed run follows the same curve.
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if cfg.name == "none":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** (s // (cfg.step_size * steps_per_epoch))
        t = (s - warmup) / max(1, total_steps - warmup)  # 0 -> 1 over the post-warmup part
        if cfg.name == "cosine":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        # onecycle: warmup (default 30% when none is set) then linear decay to ~0, as in fast CIFAR recipes
        return max(cfg.min_lr_ratio, 1.0 - t)

    return f


def build_scheduler(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.name == "onecycle" and cfg.warmup_epochs == 0:
        cfg = cfg.model_copy(update={"warmup_epochs": 0.3 * epochs})
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg, epochs * steps_per_epoch, steps_per_epoch)
    )
