"""``Checkpoints``: the one writer of a run's checkpoint files, a part of the ``Run`` called where things
happen (callbacks only observe, through ``on_checkpoint`` and ``on_interrupt``):

- ``end_epoch``: ``best.pt`` when ``trainer.checkpoint.monitor`` improves (epochs whose validation was
  skipped never count), ``last.pt`` always, ``epoch-N.pt`` every ``every_n_epochs`` epochs (the newest
  ``keep`` kept);
- ``after_step``: ``last.pt`` every ``every_n_steps`` optimizer steps, mid-epoch, with the position in the
  epoch, so a resumed run continues step for step;
- ``save_last``: ``last.pt`` where the run stands (a stop), unless it holds that already;
- ``amend``: keys added to ``best.pt`` and ``last.pt`` once training is over (multi-label thresholds).

The payload is the run's ``state_dict()`` with the best value so far. Under DDP every rank builds it (it
gathers each rank's RNG state); rank 0 alone writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kiln.checkpoint as ckpt
from kiln.config import CheckpointConfig
from kiln.engine.callbacks import is_better, skipped_validation
from kiln.paths import RunDir

Payload = Callable[[dict[str, Any]], dict[str, Any]]  # metrics -> the run's state_dict


class Checkpoints:
    def __init__(self, run: RunDir, cfg: CheckpointConfig, writes: bool) -> None:
        self.run, self.cfg, self.writes = run, cfg, writes
        self.best: float | None = None  # the monitored metric's best value, and its epoch
        self.best_epoch: int | None = None
        self.last_step = -1  # the optimizer step of the last mid-epoch write
        self.last_written: Any = None  # where the run stood when last.pt was last written

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]

    def end_epoch(self, epoch: int, metrics: dict[str, Any], payload: Payload, where: Any) -> Path:
        """The files of an epoch's end; returns the path of last.pt."""
        value = metrics[self.cfg.monitor]
        improved = not skipped_validation(metrics, self.cfg.monitor) and (
            math.isnan(value) or is_better(value, self.best, self.cfg.mode)
        )  # no val split: every epoch
        if improved:
            self.best, self.best_epoch = value, epoch
        saved = self._payload(payload, metrics)
        if improved:
            self._write(self.run.best, saved)
        self._write(self.run.last, saved)
        self.last_written = where
        if self.cfg.every_n_epochs and epoch and epoch % self.cfg.every_n_epochs == 0:
            self._write(self.run.epoch_checkpoint(epoch), saved)
            if self.writes:
                for old in self.run.epoch_checkpoints()[: -self.cfg.keep]:
                    old.unlink(missing_ok=True)
        return self.run.last

    def after_step(self, step: int, payload: Payload, where: Any) -> None:
        """``last.pt`` every ``every_n_steps`` optimizer steps (once per step)."""
        every = self.cfg.every_n_steps
        if every and step % every == 0 and step != self.last_step:
            self.last_step = step
            self.save_last(payload, where, {"step": step})

    def save_last(self, payload: Payload, where: Any, metrics: dict[str, Any] | None = None) -> None:
        """``last.pt`` where the run stands, unless it holds that already (a stop right after a write)."""
        if where != self.last_written:
            self._write(self.run.last, self._payload(payload, metrics or {}))
            self.last_written = where

    def amend(self, **extra: Any) -> None:
        """Add ``extra`` to best.pt and last.pt (what training knows only at its end)."""
        if self.writes:
            for path in (self.run.best, self.run.last):
                if path.exists():
                    ckpt.save({**ckpt.load(path), **extra}, path)

    def _payload(self, payload: Payload, metrics: dict[str, Any]) -> dict[str, Any]:
        # the tutorial's top-level keys, kept for code that reads them directly
        return {**payload(metrics), "best_metric": self.best, "best_epoch": self.best_epoch}

    def _write(self, path: Path, saved: dict[str, Any]) -> None:
        if self.writes:
            ckpt.save(saved, path)
