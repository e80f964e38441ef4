"""Checkpointing as a callback: the one writer of a run's checkpoint files.

- ``last.pt`` after every epoch, every ``trainer.checkpoint.every_n_steps`` optimizer steps (mid-epoch, with
  the position in the epoch, so a resumed run continues step for step), and on Ctrl-C/SIGTERM;
- ``best.pt`` when ``trainer.checkpoint.monitor`` improves (epochs whose validation was skipped never count);
- ``epoch-N.pt`` every ``every_n_epochs`` epochs, keeping the newest ``keep``.

It runs after every other callback (``order``), so the states it saves are the ones after this epoch. The
payload is the run's ``state_dict()`` (``FitInfo.run``). Under DDP every rank builds it (it gathers each
rank's RNG state); rank 0 alone writes.
"""

from __future__ import annotations

import math
from typing import Any

import kiln.checkpoint as ckpt
from kiln.config import CheckpointConfig
from kiln.engine.callbacks import Callback, FitInfo, is_better, skipped_validation
from kiln.paths import RunDir


class Checkpointing(Callback):
    order = 1000

    def __init__(self, run: RunDir, cfg: CheckpointConfig, writes: bool) -> None:
        self.run, self.cfg, self.writes = run, cfg, writes
        self.owner: Any = None  # the Run whose state_dict() is written (from on_fit_start)
        self.best: float | None = None  # the monitored metric's best value, and its epoch
        self.best_epoch: int | None = None
        self.last_step = -1
        self.last_written: tuple[Any, ...] | None = None  # where the run was when last.pt was last written

    def on_fit_start(self, info: FitInfo) -> None:
        self.owner = info.run

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")

    def on_batch_end(self, step: int, loss: Any, lr: float) -> None:
        every = self.cfg.every_n_steps
        if every and step % every == 0 and step != self.last_step:  # once per optimizer step
            self.last_step = step
            self._write_last(self._payload({"step": step}))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        value = metrics[self.cfg.monitor]
        improved = not skipped_validation(metrics, self.cfg.monitor) and (
            math.isnan(value) or is_better(value, self.best, self.cfg.mode)
        )  # no val split: every epoch
        if improved:
            self.best, self.best_epoch = value, epoch
        payload = self._payload(metrics)
        if improved:
            self._write(self.run.best, payload)
        self._write_last(payload)
        if self.cfg.every_n_epochs and epoch and epoch % self.cfg.every_n_epochs == 0:
            self._write(self.run.epoch_checkpoint(epoch), payload)
            if self.writes:
                for old in self.run.epoch_checkpoints()[: -self.cfg.keep]:
                    old.unlink(missing_ok=True)
        return None

    def on_interrupt(self, epoch: int, step: int) -> None:
        if self.last_written != self._where():  # last.pt already holds this state: don't wait for it again
            self._write_last(self._payload({}))

    def _where(self) -> tuple[Any, ...]:
        state = self.owner.state
        return state.epoch, state.step, tuple(self.owner.feed.state_dict().items()), state.pending is not None

    def _write_last(self, payload: dict[str, Any]) -> None:
        self._write(self.run.last, payload)
        self.last_written = self._where()

    def _payload(self, metrics: dict[str, Any]) -> dict[str, Any]:
        # the tutorial's top-level keys, kept for code that reads them directly
        return {**self.owner.state_dict(metrics), "best_metric": self.best, "best_epoch": self.best_epoch}

    def _write(self, path: Any, payload: dict[str, Any]) -> None:
        if self.writes:
            ckpt.save(payload, path)
