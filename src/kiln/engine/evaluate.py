"""Evaluation as plain functions with explicit inputs: ``infer`` (logits over a loader, test-time views
averaged), ``predict`` (the same under DDP, every sample once) and ``evaluate`` (loss, accuracy and the
config's metrics), and what a prediction is worth against its labels (``hits``, ``plain_loss``) for one
class per image and for multi-label alike."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kiln import signals
from kiln.console import Progress
from kiln.data.augment import BatchTransform
from kiln.engine.distributed import LOCAL, Dist, gather_cat

Autocast = Callable[[], contextlib.AbstractContextManager[object]]


@dataclass(frozen=True)
class EvalOptions:
    """How inference runs at evaluation."""

    tta: str = "none"  # test-time augmentation views (see tta_views)
    channels_last: bool = False
    autocast: Autocast = contextlib.nullcontext
    metric_fns: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = field(default_factory=dict)


def hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, how right the prediction is: 1/0 for one class per image (the argmax); multi-label (y a
    0/1 row), the share of the K labels whose sigmoid at 0.5 agrees (1 - the Hamming loss)."""
    if y.ndim == 1:
        return (logits.argmax(1) == y).double()
    return ((logits > 0) == (y > 0.5)).double().mean(1)


def plain_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss validation and test report, whatever the training loss: cross-entropy (no smoothing), or
    for multi-label targets binary cross-entropy; so runs compare across configs."""
    if y.ndim == 1:
        return F.cross_entropy(logits, y)
    return F.binary_cross_entropy_with_logits(logits, y.float())


def tta_views(x: torch.Tensor, mode: str) -> list[tuple[torch.Tensor, float]]:
    """The input and its test-time views with their weights in the averaged logits, as airbench94 does:
    ``flip``: the image and its mirror, 1/2 each; ``flip_translate``: those two at 1/4 each, plus the image
    shifted 1 px up-left and 1 px down-right (reflect padding) and their mirrors, 1/8 each."""
    if mode == "none":
        return [(x, 1.0)]
    if mode == "flip":
        return [(x, 0.5), (x.flip(3), 0.5)]
    pad = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[2:]
    shifted = [pad[..., 0:h, 0:w], pad[..., 2 : h + 2, 2 : w + 2]]
    return [(x, 0.25), (x.flip(3), 0.25)] + [(v, 0.125) for s in shifted for v in (s, s.flip(3))]


@torch.no_grad()
def infer(
    model: nn.Module,
    loader: Any,
    transform: BatchTransform,
    opts: EvalOptions = EvalOptions(),
    desc: str = "evaluating",
    interruptible: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (float32, on the CPU), labels and sample indices over a whole loader; TTA views averaged.
    ``interruptible``: a stop request ends it between batches (not under DDP, where the ranks must reach
    their collectives together)."""
    model.eval()
    outs, ys, ids = [], [], []
    with Progress(f"{desc} {loader.order.n:,} images", loader.order.n, "img", announce=False) as progress:
        for xb, y, idx in loader:
            if interruptible:
                signals.check()  # Ctrl-C during a validation: stop within a batch (the trainer saves)
            x = transform.eval(xb)
            if opts.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with opts.autocast():
                outs.append(sum(weight * model(v).float() for v, weight in tta_views(x, opts.tta)))
            ys.append(y)
            ids.append(idx)
            progress.update(len(idx))

    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return torch.cat(outs).cpu(), torch.cat(ys).cpu(), torch.cat(ids).cpu()


def predict(
    model: nn.Module, loader: Any, transform: BatchTransform, opts: EvalOptions, dist: Dist = LOCAL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``infer`` over a split; under DDP each rank infers its shard and all gather the rest, so every
    sample is counted exactly once (no padding duplicates) and results are in sample order."""
    logits, y, idx = infer(model, loader, transform, opts, interruptible=not dist.enabled)
    if not dist.enabled:
        return logits, y, idx
    dev = loader.device  # nccl gathers CUDA tensors, gloo CPU ones
    logits, y, idx = (gather_cat(dist, t.to(dev)).cpu() for t in (logits, y, idx))
    order = idx.argsort()
    return logits[order], y[order], idx[order]


def evaluate(
    model: nn.Module, loader: Any, transform: BatchTransform, opts: EvalOptions, dist: Dist = LOCAL
) -> dict[str, float]:
    """Loss (``plain_loss``: it compares across configs), accuracy (``hits``), and the config's extra
    metrics (``trainer.metrics``) as ``metric_<name>``."""

    logits, y, _ = predict(model, loader, transform, opts, dist)
    if y.numel() == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    out = {"loss": plain_loss(logits, y).item(), "acc": hits(logits, y).mean().item(), "n": int(len(y))}

    for name, fn in opts.metric_fns.items():
        out[f"metric_{name}"] = float(fn(logits, y))
    return out
