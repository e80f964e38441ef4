"""Ctrl-C and SIGTERM during `kiln tune`: the first signal ends the search the way Ray Tune ends it on
Ctrl-C (the running trials stopped, the experiment state saved for `--resume`, the table of the trials so
far written); a second one exits at once.

Ray Tune's own graceful stop is the handler its loop installs for SIGUSR1 (and for SIGINT, which kiln asks
it to leave alone: TUNE_DISABLE_SIGINT_HANDLER=1), so both signals reach it here and kiln still knows which
one came, for the exit code. SIGTERM needs kiln's handler: Ray's core worker installs a native one in the
driver that prints a stack dump and aborts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from kiln.signals import EXIT_CODES


def _say(message: str) -> None:
    # os.write, not print: the handler may interrupt a print to the same stream (a reentrant write raises)
    os.write(2, f"\nkiln: {message}\n".encode())


class StopOnSignal:
    """Holds SIGINT/SIGTERM while a search runs; ``signum`` is the first signal received (None: none)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "starting"  # "starting" -> "searching" (inside Tuner.fit) -> "finishing"
        self._old: dict[int, Any] = {}

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signum or signal.SIGINT), 130)

    def install(self) -> None:
        """Take both signals (again): ray.init replaces the SIGTERM handler with Ray's native one."""
        if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
            return
        for signum in EXIT_CODES:
            old = signal.signal(signum, self._handle)
            self._old.setdefault(signum, old)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            _say(f"second signal ({name}), exiting now; the search state saved so far is kept for --resume")
            os._exit(EXIT_CODES.get(signal.Signals(signum), 130))
        self.signum = signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if self.phase == "searching" and callable(tune_stop):
            _say(f"{name} received: stopping the trials and saving the search (again to exit at once)")
            tune_stop(signum, frame)  # sets Tune's stop event; its loop ends within a step (~0.1 s)
        elif self.phase == "finishing":
            _say(f"{name} received: writing the table of the trials so far (again to exit at once)")
        else:  # Ray is still starting: no trial yet, nothing to save
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        """The block that runs Tuner.fit: a signal inside it is handed to Tune's graceful stop."""
        self.phase = "searching"
        try:
            yield
        finally:
            self.phase = "finishing"

    def __enter__(self) -> StopOnSignal:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # kiln routes SIGINT to Tune's stop itself
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()
