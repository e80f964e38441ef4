"""Optimizers (parameter groups, layer decay) and per-step learning-rate schedules from the config."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kiln.config import OptimizerConfig, SchedulerConfig
from kiln.console import log
from kiln.errors import ConfigError


def layer_scales(model: nn.Module, decay: float) -> dict[int, float]:
    """timm-style layer-wise LR decay: id(param) -> lr scale (1 for the head, decay^depth below)."""
    try:
        from timm.optim import param_groups_layer_decay
    except ImportError:
        raise ConfigError("optimizer.layer_decay needs timm: pip install 'torchkiln[timm]'") from None
    if not hasattr(model, "group_matcher"):
        raise ConfigError(
            "optimizer.layer_decay: the model exposes no layers (timm's group_matcher); use a timm: "
            "model or optimizer.param_groups with lr_mult instead"
        )
    groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=decay)
    return {id(p): g["lr_scale"] for g in groups for p in g["params"]}


def param_groups(
    cfg: OptimizerConfig, model: nn.Module, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (lr multiplier, weight decay): ``optimizer.param_groups`` globs
    (first match wins), layer-wise decay, and no decay for biases/norm weights (1-D) when asked."""
    scales = layer_scales(model, cfg.layer_decay) if cfg.layer_decay else {}
    used: set[int] = set()
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen: not in the optimizer at all
        mult, wd = 1.0, weight_decay
        for i, spec in enumerate(cfg.param_groups):
            if fnmatch.fnmatchcase(name, spec.params):
                mult, wd = spec.lr_mult, wd if spec.weight_decay is None else spec.weight_decay
                used.add(i)
                break
        mult *= scales.get(id(p), 1.0)
        if cfg.no_decay_norm_bias and p.ndim <= 1:
            wd = 0.0
        g = groups.setdefault(
            (mult, wd), {"params": [], "lr": lr * mult, "weight_decay": wd, "lr_mult": mult}
        )
        g["params"].append(p)
    unused = [s.params for i, s in enumerate(cfg.param_groups) if i not in used]
    names = [n for n, _ in model.named_parameters()]
    typos = [glob for glob in unused if not any(fnmatch.fnmatchcase(n, glob) for n in names)]
    if typos:
        raise ConfigError(
            f"optimizer.param_groups: {typos} match no parameter of the model (its names look "
            f"like {names[:3]}, ..., {names[-1:]})"
        )
    if unused:  # globs for parts model.freeze froze (the photos template's backbone, in a frozen run)
        log(
            f"kiln: optimizer.param_groups {unused} match only frozen parameters; no effect while they are "
            "frozen"
        )

    if not groups:
        raise ConfigError("model.freeze: every parameter is frozen; nothing to train")
    return list(groups.values())


def lr_scale(cfg: OptimizerConfig, batch_size: int) -> float:
    """optimizer.per_images: the config's lr and weight_decay are per N images, the optimizer's are that
    times batch / N (linear scaling with the batch size); 1 without it."""
    return batch_size / cfg.per_images if cfg.per_images else 1.0


def build_optimizer(
    cfg: OptimizerConfig, model: nn.Module, batch_size: int, fused: bool
) -> torch.optim.Optimizer:
    scale = lr_scale(cfg, batch_size)
    lr, wd = cfg.lr * scale, cfg.weight_decay * scale
    groups = param_groups(cfg, model, lr, wd)
    if cfg.name == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov}
    else:
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        kwargs = {"lr": lr, "betas": cfg.betas}
    if fused:
        # One kernel for all parameters (CUDA and CPU): on the CPU it halves SGD's step time for small
        # models (LeNet: 55 us vs 102 us). Falls back where a device or dtype has no fused version.
        try:
            return cls(groups, **kwargs, fused=True)
        except (RuntimeError, ValueError):
            pass
    return cls(groups, **kwargs)


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
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: float, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.name == "onecycle" and cfg.warmup_epochs == 0:
        cfg = cfg.model_copy(update={"warmup_epochs": 0.3 * epochs})
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg, math.ceil(epochs * steps_per_epoch), steps_per_epoch)
    )


def advance(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int
) -> None:
    """Move the schedule ``steps`` optimizer steps on without taking them (epochs a solve stood for), so
    what trains next does so at the LR the schedule gives there."""
    scheduler.last_epoch += steps
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # noqa: SLF001


def add_param_group(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    params: list[nn.Parameter],
    lr_mult: float,
    weight_decay: float,
) -> None:
    """Add a group mid-run (gradual unfreezing) so the scheduler drives it like the others: same curve,
    its own base LR, and its current LR set from the schedule's present position."""
    base = scheduler.base_lrs[0] / optimizer.param_groups[0].get("lr_mult", 1.0) * lr_mult
    optimizer.add_param_group(
        {"params": params, "lr": base, "initial_lr": base, "weight_decay": weight_decay, "lr_mult": lr_mult}
    )
    scheduler.base_lrs.append(base)
    scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
    optimizer.param_groups[-1]["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # noqa: SLF001


def unfreeze(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    names: list[str],
    lr_mult: float,
    weight_decay: float,
) -> int:
    """Gradual unfreezing: the frozen parameters ``names`` train again, as a new optimizer group (lr x
    ``lr_mult``) driven by the same schedule. Returns how many tensors joined (0 when done already)."""
    wanted = set(names)
    params = [p for n, p in model.named_parameters() if n in wanted and not p.requires_grad]
    for p in params:
        p.requires_grad_(True)
    if params:
        add_param_group(optimizer, scheduler, params, lr_mult, weight_decay)
    return len(params)
