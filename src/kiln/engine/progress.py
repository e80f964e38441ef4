"""Progress on the console as a callback: a tqdm bar per epoch on a terminal (trainer.progress), and one
line per epoch always."""

from __future__ import annotations

from typing import Any

from kiln.console import EpochBar, epoch_line, log
from kiln.engine.callbacks import Callback


class ProgressBar(Callback):
    def __init__(self, epochs: int, bar: bool, has_val: bool) -> None:
        self.epochs, self.use_bar, self.has_val = epochs, bar, has_val
        self.bar: EpochBar | None = None
        self.epoch = -1

    def on_progress(self, epoch: int, batch: int, batches: int, loss: float, acc: float) -> None:
        if not self.use_bar:
            return
        if self.bar is None or self.epoch != epoch:
            self._close()
            self.epoch = epoch
            self.bar = EpochBar(f"epoch {epoch + 1}/{self.epochs}", batches, start=0)
        self.bar.update(batch, loss=loss, acc=acc)

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        self._close()
        log(epoch_line(metrics, self.epochs, self.has_val))
        return None

    def on_interrupt(self, epoch: int, step: int) -> None:
        self._close()

    def on_fit_end(self, summary: dict[str, Any]) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
