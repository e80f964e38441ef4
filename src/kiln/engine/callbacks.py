"""Callbacks: one typed method per event, each callback with its own ``state_dict`` saved in every
checkpoint (under a stable key, so adding or removing another callback never hands a state to the wrong
one). A callback asks training to stop by *returning* a reason from ``on_epoch_end``; it never reaches into
the trainer's state. kiln's own progress output, metrics.jsonl, loggers, early stopping, Lookahead and
checkpointing are callbacks too.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.atomic import write_atomic

Outputs = Any  # kiln.metrics.Outputs (logits, labels, indices, classes): given with the final test evaluation


@dataclass(frozen=True)
class FitInfo:
    """What ``on_fit_start`` is told about the run about to train."""

    run_dir: Path
    config: dict[str, Any]  # the resolved config, as plain values
    classes: list[str]
    start_epoch: int  # epochs already done (> 0 when resuming)
    start_step: int  # optimizer steps already done
    model: nn.Module  # the plain module (no DDP/compile wrapper)
    samples: Callable[[], torch.Tensor]  # a few normalised training images, read when asked
    augmented_samples: Callable[[], torch.Tensor]  # the same images through the training augmentation
    data: Any  # kiln.data.TrainData
    rank: int
    world_size: int
    run: Any = None  # kiln.engine.run.Run: the whole run (its state_dict() is the checkpoint)

    @cached_property
    def sample_images(self) -> torch.Tensor:
        """A few normalised training images (e.g. to trace the model's graph); decoded on first use only."""
        return self.samples()


class Callback:
    order = 0  # callbacks run in this order (stable); the run's checkpoints are written after them all

    def on_fit_start(self, info: FitInfo) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...  # 0-based index of the epoch about to run
    def on_batch_end(self, step: int, loss: torch.Tensor, lr: float) -> None: ...  # loss stays on the device
    def on_progress(self, epoch: int, batch: int, batches: int, loss: float, acc: float) -> None: ...  # each
    # time the loop reads the running train loss/accuracy back (every trainer.log_every_n_steps steps)
    def on_eval_end(self, split: str, metrics: dict[str, float], outputs: Outputs = None) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None: ...  # a reason = stop
    def on_checkpoint(self, epoch: int, path: Path) -> None: ...  # after last.pt of this epoch is written
    def on_interrupt(self, epoch: int, step: int) -> None: ...  # Ctrl-C/SIGTERM at a step boundary
    def on_fit_end(self, summary: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def overrides(cb: Callback, event: str) -> bool:
    return getattr(type(cb), event) is not getattr(Callback, event)


class CallbackList:
    """Dispatches each event to every callback in order; the hot loop's per-batch event goes only to those
    that override it, so it costs nothing when no callback cares about batches."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.items = sorted(callbacks, key=lambda cb: cb.order)
        self._batch = [cb for cb in self.items if overrides(cb, "on_batch_end")]
        self._progress = [cb for cb in self.items if overrides(cb, "on_progress")]

    def fit_start(self, info: FitInfo) -> None:
        for cb in self.items:
            cb.on_fit_start(info)

    def epoch_start(self, epoch: int) -> None:
        for cb in self.items:
            cb.on_epoch_start(epoch)

    def batch_end(self, step: int, loss: torch.Tensor, lr: float) -> None:
        for cb in self._batch:
            cb.on_batch_end(step, loss, lr)

    def progress(self, epoch: int, batch: int, batches: int, loss: float, acc: float) -> None:
        for cb in self._progress:
            cb.on_progress(epoch, batch, batches, loss, acc)

    def eval_end(self, split: str, metrics: dict[str, float], outputs: Outputs = None) -> None:
        for cb in self.items:
            cb.on_eval_end(split, metrics, outputs)

    def epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        reason = None
        for cb in self.items:
            reason = cb.on_epoch_end(epoch, metrics) or reason
        return reason

    def checkpoint(self, epoch: int, path: Path) -> None:
        for cb in self.items:
            cb.on_checkpoint(epoch, path)

    def interrupt(self, epoch: int, step: int) -> None:
        for cb in self.items:
            cb.on_interrupt(epoch, step)

    def fit_end(self, summary: dict[str, Any]) -> None:
        for cb in self.items:
            cb.on_fit_end(summary)

    def keyed(self) -> list[tuple[str, Callback]]:
        """Stable keys: class name and occurrence ("EarlyStopping#0")."""
        seen: dict[str, int] = {}
        out = []
        for cb in self.items:
            name = type(cb).__name__
            out.append((f"{name}#{seen.get(name, 0)}", cb))
            seen[name] = seen.get(name, 0) + 1
        return out

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {key: cb.state_dict() for key, cb in self.keyed()}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        for key, cb in self.keyed():
            if key in states:  # the same class, the same occurrence: its own saved state
                cb.load_state_dict(states[key])


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def skipped_validation(metrics: dict[str, Any], key: str) -> bool:
    """True when ``key`` is NaN because trainer.val_every_n_epochs skipped this epoch's validation."""
    return not metrics.get("validated", True) and math.isnan(metrics[key])


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs (the monitor is
    checked against the metric names when the config is loaded)."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        value = metrics[self.monitor]
        if skipped_validation(metrics, self.monitor):
            return None  # neither helps nor counts towards patience
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return None
        self.wait += 1
        if self.wait > self.patience:
            best = f"best {self.best:.4f}"
            return f"early stopping: {self.monitor} did not improve for {self.wait} epochs ({best})"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class MetricsLog(Callback):
    """One JSON object per epoch in ``metrics.jsonl``, each epoch once and in order whatever was killed when:
    on resume the lines past the resumed epoch are dropped (they were written after its checkpoint), and the
    file is rewritten whole each epoch (temp file, rename), so no line is ever torn."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def on_fit_start(self, info: FitInfo) -> None:
        self.lines = []
        if info.start_epoch > 0 and self.path.exists():
            for ln in self.path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                    if 0 < json.loads(ln)["epoch"] <= info.start_epoch:
                        self.lines.append(ln)
        write_atomic(self.path, "".join(ln + "\n" for ln in self.lines))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        self.lines.append(json.dumps(metrics))
        write_atomic(self.path, "".join(ln + "\n" for ln in self.lines))
        return None
