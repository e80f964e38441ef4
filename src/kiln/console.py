"""Console output: plain lines through the standard ``logging`` logger "kiln" (stdout; warnings on stderr),
progress for every phase that can take more than a few seconds, and a copy of it all in a log file.

``Progress`` is a tqdm bar when stdout is a terminal; otherwise (a job, ``nohup``, a notebook, output
going to a file) it prints a plain line when the phase starts, at least every 15 s while it runs (done,
total, rate, ETA) and when it ends. ``log_file(path)`` copies every line, progress lines included (the
periodic ones even while a bar is on the terminal), into a file: the run folder's ``train.log``.

Under DDP only rank 0 speaks: ``fit`` wraps the run in ``quiet(rank != 0)``, which raises the logger's level
for the run and restores it afterwards (no module-level flag of kiln's own to switch).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("kiln")
EVERY_S = 15.0  # a plain progress line at least this often (seconds)
FILE_ONLY = {"kiln_file_only": True}  # `extra` of a record that goes to the log file, not the terminal


class _Console(logging.Handler):
    """Writes to whatever sys.stdout / sys.stderr are at the time (pytest and redirects swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "kiln_file_only", False):
            return
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        print(self.format(record), file=stream, flush=True)


if not LOGGER.handlers:  # configure once per process, however often this module is imported
    LOGGER.addHandler(_Console())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def log(msg: str) -> None:
    LOGGER.info(msg)


def log_to_file(msg: str) -> None:
    """A line for the log file only (one the terminal has seen already, e.g. the CLI's error line)."""
    LOGGER.info(msg, extra=FILE_ONLY)


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


@contextlib.contextmanager
def log_file(path: Path | None) -> Iterator[None]:
    """Append every kiln line to ``path`` (with a timestamp) for the duration; None: no file."""
    if path is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:  # the folder's write check names the problem; the console still speaks
        yield
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    LOGGER.addHandler(handler)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        handler.close()


def bar_enabled(setting: str = "auto") -> bool:
    """trainer.progress: `on`, `off`, or `auto` (a bar only when stdout is a terminal)."""
    return setting == "on" or (setting == "auto" and sys.stdout.isatty())


def duration(seconds: float) -> str:
    """'42 s', '3:07', '1:02:03'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of one phase over ``total`` items. On a terminal a tqdm bar; otherwise plain lines at the
    start, every ``every`` seconds and at the end, each with the rate and the ETA. The periodic lines always
    reach the log file. ``bar``: None decides by the terminal."""

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str = "img",
        bar: bool | None = None,
        every: float = EVERY_S,
        scale: float = 1.0,
        announce: bool = True,
        start: float | None = None,
    ) -> None:
        """``announce``: print the start and end lines; False for a phase that is usually short (a
        validation): it speaks only once it has run for ``every`` seconds. ``start``: when the phase began
        (``time.perf_counter()``), if before this object was made."""
        self.desc, self.total, self.unit, self.every, self.announce = desc, total, unit, every, announce
        self.scale = scale  # items per step counted (e.g. images per batch) for the rate shown
        self.done, self.t0 = 0, time.perf_counter() if start is None else start
        self.last_line = self.last_set = self.t0
        self.postfix: dict[str, Any] = {}
        self.bar: Any = None
        if bar_enabled() if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit=unit)
        if announce:
            self._line(f"kiln: {desc} ...", to_terminal=self.bar is None)

    def _line(self, text: str, to_terminal: bool) -> None:
        LOGGER.info(text, extra=None if to_terminal else FILE_ONLY)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.set(self.done + n, **postfix)

    def set(self, done: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(done - self.done)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)
        self.done, self.postfix = done, postfix or self.postfix
        now = time.perf_counter()
        # updates seconds apart (training steps of a big model on a CPU): speak now if waiting for the next
        # one, likely as far away as this one was, would leave more than `every` without a line
        next_update, self.last_set = now - self.last_set, now
        if now - self.last_line + next_update >= self.every:
            self.last_line = now
            self._line(self.status(now), to_terminal=self.bar is None)

    def status(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.t0
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        extra = "".join(f", {k} {v:.4f}" for k, v in self.postfix.items())
        pct = 100 * self.done / max(self.total, 1)
        return (
            f"kiln: {self.desc}: {self.done:,}/{self.total:,} ({pct:.0f}%), {rate * self.scale:,.1f} "
            f"{self.unit}/s, ETA {duration(eta) if eta != float('inf') else '?'}{extra}"
        )

    def close(self, summary: bool = True) -> float:
        """End the phase; returns its seconds. ``summary``: print the closing line."""
        elapsed = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if summary and (self.announce or elapsed >= self.every):
            rate = self.done * self.scale / max(elapsed, 1e-9)
            log(f"kiln: {self.desc}: done, {self.done:,} in {duration(elapsed)} ({rate:,.1f} {self.unit}/s)")
        return elapsed

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.close(summary=kind is None)


def epoch_line(m: dict[str, Any], epochs: int, has_val: bool = True) -> str:
    """One line per epoch; a run without a val split shows no val columns (not `val_acc nan`)."""
    val = f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  " if has_val else ""
    return (
        f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
        f"{val}lr {m['lr']:.3g}  {m['images_per_s']:,.0f} img/s  {m['seconds']:.2f}s"
    )
