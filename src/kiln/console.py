"""Console output: plain lines through the standard ``logging`` logger "kiln" (stdout; warnings on stderr),
and a tqdm bar per epoch when stdout is a terminal.

Under DDP only rank 0 speaks: ``fit`` wraps the run in ``quiet(rank != 0)``, which raises the logger's level
for the run and restores it afterwards (no module-level flag of kiln's own to switch).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

LOGGER = logging.getLogger("kiln")


class _Console(logging.Handler):
    """Writes to whatever sys.stdout / sys.stderr are at the time (pytest and redirects swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        print(self.format(record), file=stream, flush=True)


if not LOGGER.handlers:  # configure once per process, however often this module is imported
    LOGGER.addHandler(_Console())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def log(msg: str) -> None:
    LOGGER.info(msg)


def warn(msg: str) -> None:
    LOGGER.warning(f"kiln: warning: {msg}")


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Silence ``log`` (not warnings) inside the block when ``on``."""
    old = LOGGER.level
    if on:
        LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(old)


def bar_enabled(setting: str) -> bool:
    """trainer.progress: `on`, `off`, or `auto` (a bar only when stdout is a terminal)."""
    return setting == "on" or (setting == "auto" and sys.stdout.isatty())


class EpochBar:
    def __init__(self, desc: str, total: int, start: int = 0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True, unit="batch")
        self.last = start

    def update(self, position: int, **values: Any) -> None:
        self.bar.update(position - self.last)
        self.last = position
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)

    def close(self) -> None:
        self.bar.close()


def epoch_line(m: dict[str, Any], epochs: int, has_val: bool = True) -> str:
    """One line per epoch; a run without a val split shows no val columns (not `val_acc nan`)."""
    val = f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  " if has_val else ""
    return (
        f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
        f"{val}lr {m['lr']:.3g}  {m['images_per_s']:,.0f} img/s  {m['seconds']:.2f}s"
    )
