"""Ctrl-C / SIGTERM during training: the first signal asks the loop to stop after the current step (a
checkpoint is then written and the resume command printed); a second one exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report them


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:  # the loop asks: stop now?
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: no more waiting
            sys.stderr.write("\nkiln: second interrupt, exiting now (the last checkpoint written is kept)\n")
            os._exit(EXIT_CODES.get(signal.Signals(signum), 130))
        self.signum = signum
        sys.stderr.write(
            f"\nkiln: {signal.Signals(signum).name} received; stopping after this step and saving "
            "a checkpoint (interrupt again to exit at once)\n"
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in EXIT_CODES:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
