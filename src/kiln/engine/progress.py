"""Training progress as a callback: each epoch a bar on a terminal (trainer.progress), otherwise a plain line
at least every 15 s with the rate, the ETA and the running loss (in the run's train.log either way), and
one line per epoch always."""

from __future__ import annotations

import time
from typing import Any

from kiln.console import Progress, epoch_line, log
from kiln.engine.callbacks import Callback


class ProgressBar(Callback):
    def __init__(self, epochs: int, bar: bool, has_val: bool, batch_size: int) -> None:
        self.epochs, self.use_bar, self.has_val, self.batch_size = epochs, bar, has_val, batch_size
        self.progress: Progress | None = None
        self.epoch = -1
        self.started = time.perf_counter()  # the epoch's training steps began (after its feed's preparation)

    def on_epoch_start(self, epoch: int) -> None:
        self.started = time.perf_counter()

    def on_progress(self, epoch: int, batch: int, batches: int, loss: float, acc: float) -> None:
        if self.progress is None or self.epoch != epoch:
            self._close()
            self.epoch = epoch
            self.progress = Progress(
                f"epoch {epoch + 1}/{self.epochs}, batch",  # counts batches; the rate is in images/s
                batches,
                "img",
                bar=self.use_bar,
                scale=self.batch_size,
                announce=False,
                start=self.started,
            )
        self.progress.set(batch, loss=loss, acc=acc)

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        self._close()
        log(epoch_line(metrics, self.epochs, self.has_val))
        return None

    def on_interrupt(self, epoch: int, step: int) -> None:
        self._close()

    def on_fit_end(self, summary: dict[str, Any]) -> None:
        self._close()

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.close(summary=False)
            self.progress = None
