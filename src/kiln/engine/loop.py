"""The hot loop: ``train_one_epoch`` and ``evaluate``, plain functions over an ``Engine`` bundle.

No host synchronisation per step: loss and accuracy accumulate on the device and are read back every
``log_every`` steps (for the progress bar and the non-finite check) and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
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
from kiln.engine.distributed import Dist, all_sum, gather_cat
from kiln.engine.ema import EMA
from kiln.errors import TrainingStopped


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float | None = None
    best_epoch: int | None = None
    last_loss: float | None = None  # last finite train loss read back
    skipped_steps: int = 0  # batches dropped for a non-finite loss (trainer.on_nan=skip)

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
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # None: cross-entropy
    metric_fns: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)  # parameter names frozen by model.freeze
    frozen_bn: list[nn.Module] = field(default_factory=list)  # BatchNorm layers kept in eval mode
    dist: Dist = Dist()
    skip_nan: bool = False
    step_hook: Callable[[int], None] | None = None  # called after each optimizer step with the step count
    should_stop: Callable[[], bool] = lambda: False  # a signal handler's flag: stop at the next step boundary
    step_scheduler: bool = True  # False for a constant LR: skips a Python-heavy call per step
    init_seconds: float = 0.0  # spent on a data-dependent init (model.pca_init): part of the training time

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def _to_input(engine: Engine, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if engine.channels_last else x


class _Tally:
    """Per-step losses, logits and labels kept on the device and reduced every ``log_every`` steps: one
    host sync per flush instead of several tensor ops (and, on GPUs, a sync) per step."""

    def __init__(self, state: TrainState, dist: Dist, device: torch.device) -> None:
        self.dist_device = device
        self.state, self.dist, self.losses, self.logits, self.labels = state, dist, [], [], []  # type: ignore[var-annotated]
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.losses.append(loss)
        self.logits.append(logits)
        self.labels.append(y)

    def flush(self, epoch: int, step: int, stop: bool = False) -> bool:
        """Reduce what was added (over ranks too); returns True if any rank asked to stop."""
        if not self.losses and not self.dist.enabled:
            return stop
        if self.losses:
            losses = torch.stack(self.losses).float()
            sizes = torch.tensor([len(y) for y in self.labels], device=losses.device, dtype=torch.float32)
            correct = (torch.cat(self.logits).argmax(1) == torch.cat(self.labels)).sum()
            local = [(losses * sizes).sum().double(), correct.double(), sizes.sum().double()]
        else:  # every batch since the last flush was skipped: still join the collective below
            losses = torch.zeros(0, device=self.dist_device)
            local = [torch.zeros((), dtype=torch.float64, device=self.dist_device)] * 3
        flag = torch.tensor(1.0 if stop else 0.0, dtype=torch.float64, device=losses.device)
        # summed over ranks under DDP: every rank sees a NaN on any rank, so all stop at the same step
        stats = all_sum(self.dist, torch.stack([*local, flag]))
        loss_sum, correct_n, seen, stop_votes = stats.tolist()  # the one host sync
        if loss_sum != loss_sum or abs(loss_sum) == float("inf"):
            finite = torch.isfinite(losses)
            bad = (
                int((~finite).nonzero()[0])
                if len(losses) and not bool(finite.all())
                else max(len(losses) - 1, 0)
            )
            value = float(losses[bad]) if len(losses) else float("nan")
            raise TrainingStopped(
                f"non-finite loss ({value}) at epoch {epoch + 1}, step {step - len(losses) + bad + 1}; "
                f"last finite loss {self.state.last_loss}. Lower optimizer.lr, set trainer.grad_clip, or "
                "trainer.on_nan=skip; checkpoints keep their last good contents"
            )
        if len(losses):
            self.state.last_loss = float(losses[-1])
        self.loss_sum += loss_sum
        self.correct += int(correct_n)
        self.seen += int(seen)
        self.losses, self.logits, self.labels = [], [], []
        return stop_votes > 0


def train_one_epoch(
    engine: Engine, loader: Any, state: TrainState, progress: Any = None, limit: int | None = None
) -> dict[str, float]:
    """One epoch (or its first ``limit`` batches, for a fractional last epoch) of training."""
    model, opt, scaler = engine.model, engine.optimizer, engine.scaler
    model.train()
    for bn in engine.frozen_bn:
        bn.eval()  # frozen BatchNorm: running statistics must not move either
    batch_cbs = [cb for cb in engine.callbacks if cb.wants_batches]
    tally = _Tally(state, engine.dist, engine.device)
    use_scaler = scaler.is_enabled()
    n_batches, log_every, t0 = min(len(loader), limit or len(loader)), engine.log_every, time.perf_counter()
    start = loader.state_dict()["position"]  # > 0 when resuming mid-epoch
    for i, (xb, y, idx) in enumerate(loader, start=start):
        x = _to_input(engine, engine.transform(xb, idx, state.epoch, i, train=True))
        lam, perm = _mixup(engine, x, state.epoch, i)
        if perm is not None:
            x = torch.lerp(x[perm], x, lam)  # lam * x + (1 - lam) * x[perm]
        with engine.autocast():
            logits = model(x).float()
            loss = _loss(engine, logits, y)
            if perm is not None:
                loss = lam * loss + (1 - lam) * _loss(engine, logits, y[perm])
        # trainer.on_nan=skip: a host read per step to drop a non-finite batch before it touches the weights
        skip = engine.skip_nan and not bool(torch.isfinite(loss.detach()))
        if skip:
            state.skipped_steps += 1
        else:
            scaled = scaler.scale(loss) if use_scaler else loss
            (scaled / engine.accumulate if engine.accumulate > 1 else scaled).backward()
            tally.add(loss.detach(), logits.detach(), y)
        loss = loss.detach()
        last, stop = i + 1 == n_batches, False
        if engine.accumulate == 1 or (i + 1) % engine.accumulate == 0 or last:
            if engine.grad_clip is not None:
                if use_scaler:
                    scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), engine.grad_clip)
            if use_scaler:  # fp16: skip steps with inf/nan gradients and adapt the scale
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            if engine.step_scheduler:
                engine.scheduler.step()
            state.step += 1
            if engine.ema is not None:
                engine.ema.update(model)
            if engine.step_hook is not None:
                engine.step_hook(state.step)  # mid-epoch checkpoints (trainer.checkpoint.every_n_steps)
            stop = not engine.dist.enabled and engine.should_stop()  # Ctrl-C: stop at a step boundary
        for cb in batch_cbs:
            cb.on_batch_end(state.step, loss, opt.param_groups[0]["lr"])
        if (i + 1) % log_every == 0 or last or stop:
            # under DDP the ranks agree here (the flag is reduced with the loss), so all stop together
            stop = tally.flush(state.epoch, state.step, engine.should_stop()) or stop
            if progress is not None:
                progress.update(
                    i + 1, loss=tally.loss_sum / max(tally.seen, 1), acc=tally.correct / max(tally.seen, 1)
                )
        if last or stop:
            break  # a fractional last epoch, or an interrupt, stops here before the loader's end
    seconds = time.perf_counter() - t0
    seen = max(tally.seen, 1)
    return {"train_loss": tally.loss_sum / seen, "train_acc": tally.correct / seen,
            "images_per_s": tally.seen / max(seconds, 1e-9), "interrupted": bool(stop)}  # fmt: skip


def _loss(engine: Engine, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if engine.loss_fn is None:  # the default, inlined: no extra Python call per step
        return F.cross_entropy(logits, y, label_smoothing=engine.label_smoothing)
    return engine.loss_fn(logits, y)


def _mixup(engine: Engine, x: torch.Tensor, epoch: int, step: int) -> tuple[float, torch.Tensor | None]:
    if engine.mixup <= 0:
        return 1.0, None
    # seeded by (seed, epoch, step) like the augmentations, so resume draws the same pairs
    rng = random.Random(hash((engine.transform.seed, epoch, step)))
    g = seeded_generator(torch.device("cpu"), engine.transform.seed, epoch, step, 1)
    return rng.betavariate(engine.mixup, engine.mixup), torch.randperm(x.shape[0], generator=g).to(x.device)


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
    loader: Iterable[Any],
    transform: BatchTransform,
    tta: str = "none",
    autocast: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (float32, on the CPU), labels and sample indices over a whole loader; TTA views averaged."""
    model.eval()
    outs, ys, ids = [], [], []
    for xb, y, idx in loader:
        x = transform(xb, idx, 0, 0, train=False)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            outs.append(sum(weight * model(v).float() for v, weight in tta_views(x, tta)))
        ys.append(y)
        ids.append(idx)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return torch.cat(outs).cpu(), torch.cat(ys).cpu(), torch.cat(ids).cpu()


def predict(engine: Engine, loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``infer`` with the engine's settings; under DDP each rank infers its shard and all gather the rest,
    so every sample is counted exactly once (no padding duplicates) and results are in sample order."""
    logits, y, idx = infer(engine.eval_model, loader, engine.transform, engine.tta, engine.autocast,
                           engine.channels_last)  # fmt: skip
    if not engine.dist.enabled:
        return logits, y, idx
    dev = engine.device  # nccl gathers CUDA tensors, gloo CPU ones
    logits, y, idx = (gather_cat(engine.dist, t.to(dev)).cpu() for t in (logits, y, idx))
    order = idx.argsort()
    return logits[order], y[order], idx[order]


def evaluate(engine: Engine, loader: Iterable[Any]) -> dict[str, float]:
    """Loss (plain cross-entropy, no smoothing, so it compares across configs), accuracy, and the
    config's extra metrics (``trainer.metrics``) as ``metric_<name>``."""
    logits, y, _ = predict(engine, loader)
    if y.numel() == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    out = {"loss": F.cross_entropy(logits, y).item(), "acc": (logits.argmax(1) == y).double().mean().item(),
           "n": int(y.numel())}  # fmt: skip
    for name, fn in engine.metric_fns.items():
        out[f"metric_{name}"] = float(fn(logits, y))
    return out
