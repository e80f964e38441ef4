"""Callbacks: a small set of events, each with its own ``state_dict`` saved in every checkpoint.

A callback asks training to stop by *returning* a reason string from ``on_epoch_end``; it never
reaches into the engine's state. The engine calls ``on_batch_end`` only on callbacks that override it,
so the hot loop pays nothing for callbacks that do not care about batches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


class Callback:
    def on_fit_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def on_batch_end(self, step: int, loss: torch.Tensor, lr: float) -> None: ...  # loss stays on device
    def on_eval_end(self, split: str, metrics: dict[str, float], outputs: Any = None) -> None: ...  # outputs:
    # kiln.evaluation.metrics.Outputs (logits, labels, indices, classes), given for the final test evaluation
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None: ...  # a reason = stop
    def on_checkpoint(self, epoch: int, path: Path) -> None: ...  # after last.pt of this epoch is written
    def on_fit_end(self, summary: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    def wants_batches(self) -> bool:
        return type(self).on_batch_end is not Callback.on_batch_end


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def skipped_validation(metrics: dict[str, Any], key: str) -> bool:
    """True when ``key`` is NaN because trainer.val_every_n_epochs skipped this epoch's validation."""
    return not metrics.get("validated", True) and math.isnan(metrics[key])


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None:
        if self.monitor not in metrics:
            raise KeyError(f"trainer.early_stopping.monitor: '{self.monitor}' is not a metric "
                           f"(metrics: {', '.join(sorted(metrics))})")  # fmt: skip
        value = metrics[self.monitor]
        if skipped_validation(metrics, self.monitor):
            return None  # neither helps nor counts towards patience
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return None
        self.wait += 1
        if self.wait > self.patience:
            return f"early stopping: {self.monitor} did not improve for {self.wait} epochs (best {self.best:.4f})"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class MetricsLog(Callback):
    """One JSON object per epoch in ``metrics.jsonl``; on resume, lines past the resumed epoch are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_start(self, info: dict[str, Any]) -> None:
        start = info["start_epoch"]
        if start == 0 or not self.path.exists():
            self.path.write_text("")
            return
        kept = [
            ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= start
        ]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None:
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        return None
