"""The hot loop: ``train_one_epoch`` and ``evaluate``, plain functions over an ``Engine`` bundle.

No host synchronisation per step: loss and accuracy accumulate on the device and are read back every
``log_every`` steps (for the progress bar and the non-finite check) and at the end of the epoch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.augment import BatchTransform, seeded_generator
from kiln.engine.callbacks import Callback
from kiln.engine.ema import EMA
from kiln.errors import TrainingStopped


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float | None = None
    best_epoch: int | None = None
    last_loss: float | None = None  # last finite train loss read back

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Engine:
    """Everything one training step needs, built once by ``fit``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Callable[[], AbstractContextManager[object]]
    transform: BatchTransform
    device: torch.device
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    accumulate: int = 1
    log_every: int = 50
    channels_last: bool = False
    callbacks: list[Callback] = field(default_factory=list)
    ema: EMA | None = None
    tta: str = "none"
    mixup: float = 0.0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def _to_input(engine: Engine, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if engine.channels_last else x


def train_one_epoch(engine: Engine, loader: Any, state: TrainState, progress: Any = None) -> dict[str, float]:
    model, opt = engine.model, engine.optimizer
    model.train()
    batch_cbs = [cb for cb in engine.callbacks if cb.wants_batches]
    loss_sum = torch.zeros((), device=engine.device, dtype=torch.float64)
    correct = torch.zeros((), device=engine.device, dtype=torch.int64)
    seen, n_batches, t0 = 0, len(loader), time.perf_counter()
    start = loader.state_dict()["position"]  # > 0 when resuming mid-epoch
    # Host reads are cheap on the CPU, so check every step there; on GPUs only every log_every steps.
    check_every = 1 if engine.device.type == "cpu" else engine.log_every
    for i, (xb, y, idx) in enumerate(loader, start=start):
        x = _to_input(engine, engine.transform(xb, idx, state.epoch, i, train=True))
        lam, perm = _mixup(engine, x, state.epoch, i)
        if perm is not None:
            x = torch.lerp(x[perm], x, lam)  # lam * x + (1 - lam) * x[perm]
        with engine.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=engine.label_smoothing)
            if perm is not None:
                loss = lam * loss + (1 - lam) * F.cross_entropy(logits.float(), y[perm],
                                                                label_smoothing=engine.label_smoothing)  # fmt: skip
        engine.scaler.scale(loss / engine.accumulate if engine.accumulate > 1 else loss).backward()
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        last = i + 1 == n_batches
        if (i + 1) % engine.accumulate == 0 or last:
            if engine.grad_clip is not None:
                engine.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), engine.grad_clip)
            engine.scaler.step(opt)
            engine.scaler.update()
            opt.zero_grad(set_to_none=True)
            engine.scheduler.step()
            state.step += 1
            if engine.ema is not None:
                engine.ema.update(model)
        for cb in batch_cbs:
            cb.on_batch_end(state.step, loss.detach(), opt.param_groups[0]["lr"])
        if (i + 1) % check_every == 0 or last:
            value = float(loss.detach())
            if value != value or value in (float("inf"), float("-inf")):
                raise TrainingStopped(
                    f"non-finite loss ({value}) at epoch {state.epoch + 1}, step {state.step}; last finite loss "
                    f"{state.last_loss}. Lower optimizer.lr or set trainer.grad_clip; checkpoints keep their "
                    "last good contents"
                )
            state.last_loss = value
        if progress is not None and ((i + 1) % engine.log_every == 0 or last):
            progress.update(i + 1, loss=float(loss_sum / max(seen, 1)), acc=float(correct) / max(seen, 1))
    seconds = time.perf_counter() - t0
    return {"train_loss": float(loss_sum) / max(seen, 1), "train_acc": float(correct) / max(seen, 1),
            "images_per_s": seen / max(seconds, 1e-9)}  # fmt: skip


def _mixup(engine: Engine, x: torch.Tensor, epoch: int, step: int) -> tuple[float, torch.Tensor | None]:
    if engine.mixup <= 0:
        return 1.0, None
    # seeded by (seed, epoch, step) like the augmentations, so resume draws the same pairs
    rng = random.Random(hash((engine.transform.seed, epoch, step)))
    g = seeded_generator(torch.device("cpu"), engine.transform.seed, epoch, step, 1)
    return rng.betavariate(engine.mixup, engine.mixup), torch.randperm(x.shape[0], generator=g).to(x.device)


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The input plus its test-time views: horizontal flip, and 2-px translations of both."""
    if mode == "none":
        return [x]
    views = [x, x.flip(3)]
    if mode == "flip_translate":
        pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
        h, w = x.shape[2:]
        for v in (pad[..., 0:h, 0:w], pad[..., 4 : h + 4, 4 : w + 4]):  # shifted up-left and down-right
            views += [v, v.flip(3)]
    return views


@torch.no_grad()
def predict(engine: Engine, loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (float32, on the CPU), labels and sample indices over a whole loader; TTA views averaged."""
    model = engine.eval_model
    model.eval()
    outs, ys, ids = [], [], []
    for xb, y, idx in loader:
        x = _to_input(engine, engine.transform(xb, idx, 0, 0, train=False))
        with engine.autocast():
            outs.append(torch.stack([model(v).float() for v in tta_views(x, engine.tta)]).mean(0))
        ys.append(y)
        ids.append(idx)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return torch.cat(outs).cpu(), torch.cat(ys).cpu(), torch.cat(ids).cpu()


def evaluate(engine: Engine, loader: Iterable[Any]) -> dict[str, float]:
    """Loss (plain cross-entropy, no smoothing, so it compares across configs) and accuracy."""
    logits, y, _ = predict(engine, loader)
    if y.numel() == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    loss = F.cross_entropy(logits, y).item()
    return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean().item(), "n": int(y.numel())}
