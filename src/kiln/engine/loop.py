"""The hot loop: ``train_one_epoch`` as a plain function with explicit inputs (evaluation: ``evaluate.py``).

No host synchronisation per step: loss and accuracy accumulate on the device and are read back every
``log_every`` optimizer steps (for the progress bar and the non-finite check) and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kiln.data.augment import BatchTransform, Mix
from kiln.engine.callbacks import CallbackList
from kiln.engine.distributed import LOCAL, Dist, all_sum
from kiln.engine.ema import EMA
from kiln.engine.evaluate import Autocast, hits
from kiln.engine.stops import Stops, never
from kiln.errors import TrainingStopped

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> scalar loss


@dataclass
class TrainState:
    """What changes as training runs (the configuration does not): counters and the last loss read back."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    last_loss: float | None = None  # last finite train loss read back
    skipped_steps: int = 0  # batches dropped for a non-finite loss (trainer.on_nan=skip)
    pending: dict[str, Any] | None = None  # train metrics of an epoch interrupted during its validation


@dataclass(frozen=True)
class StepOptions:
    """How a training step runs; fixed for a run (from ``cfg.trainer``)."""

    accumulate: int = 1  # optimizer step every N batches
    grad_clip: float | None = None  # max gradient norm
    log_every: int = 50  # optimizer steps between host reads of the running loss
    skip_nan: bool = False  # drop a batch with a non-finite loss instead of stopping
    channels_last: bool = False
    autocast: Autocast = contextlib.nullcontext
    # also read the running loss back after this many seconds (one process only: under DDP the ranks must
    # agree on when, so only log_every counts there), so progress lines come at least every ~15 s
    report_every_s: float = 5.0


def train_one_epoch(
    model: nn.Module,
    criterion: Criterion,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    transform: BatchTransform,
    state: TrainState,
    opts: StepOptions,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: EMA | None = None,
    frozen_bn: Sequence[nn.Module] = (),
    callbacks: CallbackList | None = None,
    dist: Dist = LOCAL,
    should_stop: Callable[[], bool] = never,
    limit: int | None = None,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One epoch of training, or its first ``limit`` batches (a fractional last epoch). ``scheduler`` None:
    a constant LR (no per-step call). ``frozen_bn`` stay in eval mode. ``after_step(step)`` runs after each
    optimizer step (a mid-epoch checkpoint). When ``should_stop`` (a signal handler's flag) turns on, the
    epoch ends at a step boundary with ``signals.Interrupt`` (``Stops``); at its last step the epoch is
    complete and returns."""
    callbacks = callbacks or CallbackList([])
    train_mode(model, frozen_bn)
    tally = _Tally(dist, loader.device)
    scaler = scaler if scaler is not None and scaler.is_enabled() else None
    n_batches, t0 = min(len(loader), limit or len(loader)), time.perf_counter()
    last_read, start = t0, loader.state_dict()["position"]  # > 0 when resuming mid-epoch
    stops = Stops(model, loader, optimizer, should_stop, dist, start)
    for i, (xb, y, idx) in enumerate(loader, start=start):
        if i % opts.accumulate == 0:
            stops.begin(i)
        last, stepped = i + 1 == n_batches, (i + 1) % opts.accumulate == 0 or i + 1 == n_batches
        with stops.watching():  # a stop inside a step of seconds abandons it within ~0.1 s
            loss, logits = forward_loss(model, criterion, transform, (xb, y, idx), state.epoch, i, opts)
            stops.check()  # asked during the forward: abandoned before its backward
            # trainer.on_nan=skip: a host read per step drops a non-finite batch before it reaches the weights
            if opts.skip_nan and not bool(torch.isfinite(loss.detach())):
                state.skipped_steps += 1
            else:
                backward(loss, scaler, opts.accumulate)
                tally.add(loss.detach(), logits.detach(), y)
        if stepped:
            optimizer_step(model, optimizer, scaler, opts.grad_clip)
            if scheduler is not None:
                scheduler.step()
            state.step += 1
            if ema is not None:
                ema.update()
            if after_step is not None:
                after_step(state.step)
        else:
            stops.check()  # mid-accumulation: the window's earlier batches go back too
        callbacks.batch_end(state.step, loss.detach(), optimizer.param_groups[0]["lr"])
        due = stepped and (
            state.step % opts.log_every == 0
            or (not dist.enabled and time.perf_counter() - last_read >= opts.report_every_s)
        )
        agreed = False
        if due or last:
            # under DDP the ranks agree here whether to stop (the flag is reduced with the loss)
            agreed, state.last_loss = tally.flush(state.epoch, state.step, should_stop(), state.last_loss)
            last_read = time.perf_counter()
            callbacks.progress(state.epoch, i + 1, n_batches, *tally.running())
        if last:
            break  # a fractional last epoch ends here; a stop asked now keeps the whole epoch
        if stepped:
            stops.at_boundary(agreed)
    seconds, (loss_avg, acc) = time.perf_counter() - t0, tally.running()
    speed = {"images_per_s": tally.seen / max(seconds, 1e-9), "train_seconds": seconds}
    return {"train_loss": loss_avg, "train_acc": acc, **speed}


def train_mode(model: nn.Module, frozen_bn: Sequence[nn.Module] = ()) -> None:

    model.train()
    for bn in frozen_bn:
        bn.eval()  # frozen BatchNorm: running statistics must not move either


def forward_loss(
    model: nn.Module,
    criterion: Criterion,
    transform: BatchTransform,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    epoch: int,
    index: int,
    opts: StepOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch ``(images, labels, sample indices)``, the ``index``-th of ``epoch``: its augmentation
    (and mixup/cutmix), forward under autocast, loss. Returns (loss, float32 logits)."""
    xb, y, idx = batch
    x, mix = transform.train(xb, idx, epoch, index)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with opts.autocast():
        logits = model(x).float()
        loss = mixed_loss(criterion, logits, y, mix)
    return loss, logits


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None, accumulate: int) -> None:
    """Gradients of ``loss``, scaled for fp16 and shared over the ``accumulate`` batches of one step."""
    scaled = scaler.scale(loss) if scaler is not None else loss
    (scaled / accumulate if accumulate > 1 else scaled).backward()


def mixed_loss(criterion: Criterion, logits: torch.Tensor, y: torch.Tensor, mix: Mix | None) -> torch.Tensor:

    loss = criterion(logits, y)
    return loss if mix is None else mix.lam * loss + (1 - mix.lam) * criterion(logits, y[mix.perm])


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> None:
    """Clip, step (through the fp16 scaler, which skips steps with inf/nan gradients), zero the grads."""
    if grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class _Tally:
    """Per-step losses, logits and labels kept on the device and reduced at each flush: one host sync per
    flush instead of several tensor ops (and, on GPUs, a sync) per step."""

    def __init__(self, dist: Dist, device: torch.device) -> None:
        self.dist, self.device = dist, device
        self.losses: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.losses.append(loss)
        self.logits.append(logits)
        self.labels.append(y)

    def running(self) -> tuple[float, float]:
        """Mean train loss and accuracy over the batches flushed so far."""
        seen = max(self.seen, 1)
        return self.loss_sum / seen, self.correct / seen

    def flush(self, epoch: int, step: int, stop: bool, last_loss: float | None) -> tuple[bool, float | None]:
        """Reduce what was added (over ranks too); returns (whether any rank asked to stop, the last finite
        loss). Raises TrainingStopped on a non-finite loss."""
        if not self.losses and not self.dist.enabled:
            return stop, last_loss
        if self.losses:
            losses = torch.stack(self.losses).float()
            sizes = torch.tensor([len(y) for y in self.labels], device=losses.device, dtype=torch.float32)
            correct = hits(torch.cat(self.logits), torch.cat(self.labels)).sum()
            local = [(losses * sizes).sum().double(), correct.double(), sizes.sum().double()]
        else:  # every batch since the last flush was skipped: still join the collective below
            losses = torch.zeros(0, device=self.device)
            local = [torch.zeros((), dtype=torch.float64, device=self.device)] * 3
        flag = torch.tensor(1.0 if stop else 0.0, dtype=torch.float64, device=losses.device)
        # summed over ranks under DDP: every rank sees a NaN on any rank, so all stop at the same step
        loss_sum, correct_n, seen, stop_votes = all_sum(self.dist, torch.stack([*local, flag])).tolist()
        if loss_sum != loss_sum or abs(loss_sum) == float("inf"):
            self._raise_non_finite(losses, epoch, step, last_loss)
        if len(losses):
            last_loss = float(losses[-1])
        self.loss_sum += loss_sum
        self.correct += int(correct_n)
        self.seen += int(seen)
        self.losses, self.logits, self.labels = [], [], []
        return stop_votes > 0, last_loss

    def _raise_non_finite(self, losses: torch.Tensor, epoch: int, step: int, last_loss: float | None) -> None:
        finite = torch.isfinite(losses)
        if len(losses) and not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
        else:
            bad = max(len(losses) - 1, 0)
        value = float(losses[bad]) if len(losses) else float("nan")
        raise TrainingStopped(
            f"non-finite loss ({value}) at epoch {epoch + 1}, step {step - len(losses) + bad + 1}; "
            f"last finite loss {last_loss}. Lower optimizer.lr, set trainer.grad_clip, or "
            "trainer.on_nan=skip; checkpoints keep their last good contents"
        )
