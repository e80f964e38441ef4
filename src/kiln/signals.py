"""Ctrl-C (SIGINT), SIGTERM and SIGUSR1, one handler for a whole command, honoured within a second or two
in every phase.

What the first signal does depends on what the process is doing:

- in a *graceful* section (the training steps, validation) it only sets a flag: the loop stops at the next
  step boundary, writes ``last.pt`` and prints the resume command;
- in a *critical* section (an atomic checkpoint or summary write) it waits for the write to finish;
- anywhere else (decoding, a feature pass, an export, an evaluation) it raises ``Interrupt`` at once: the
  phase unwinds through its ``finally`` blocks (worker processes stopped, temp files removed) and the
  command exits with 128 + the signal's number. Finished work (cache entries, checkpoints) is kept.

A second signal exits at once, except inside a critical section: then right after the write, so a
checkpoint being written is never left half-done (an atomic write never tears the previous one either).

SIGUSR1 is what SLURM sends before it ends or requeues a job (``#SBATCH --signal=USR1@120``): kiln treats
it as SIGTERM and exits with 138, which a requeue script can test for.

The state is the process's (signal handlers are process-wide), kept in one object of this module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
EXIT_CODES = {int(s): 128 + int(s) for s in HANDLED}  # as shells report them: 130, 143, 138


class Interrupt(KeyboardInterrupt):
    """Raised by the handler outside graceful sections. A KeyboardInterrupt, so that no ``except
    Exception`` on the way up turns it into another error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received, if any
        self.graceful = 0  # depth of graceful sections
        self.critical = 0  # depth of critical sections
        self.exit_after_critical = False
        self.raised = False  # an Interrupt for this signal has been raised already
        self.installed = 0  # depth of install(): nested commands share one handler
        self.previous: dict[int, Any] = {}
        self.pid = 0  # the process that installed the handler (a forked worker inherits it: see _handle)


_STATE = _State()


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _handle(signum: int, frame: FrameType | None) -> None:
    if (
        os.getpid() != _STATE.pid
    ):  # a forked worker (decoding, a DataLoader): the parent decides; default here
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _STATE.signum is not None:  # the second signal
        if _STATE.critical:
            _STATE.exit_after_critical = True
            sys.stderr.write(
                "\nkiln: second interrupt; exiting as soon as the file being written is complete\n"
            )
            return
        sys.stderr.write("\nkiln: second interrupt, exiting now (the last checkpoint written is kept)\n")
        sys.stderr.flush()
        os._exit(EXIT_CODES.get(signum, 130))
    _STATE.signum = signum
    if _STATE.graceful or _STATE.critical:
        sys.stderr.write(
            f"\nkiln: {_name(signum)} received; stopping after this step and saving a checkpoint "
            "(interrupt again to exit at once)\n"
        )
        return
    sys.stderr.write(f"\nkiln: {_name(signum)} received; stopping\n")
    _STATE.raised = True
    raise Interrupt(signum)


@contextlib.contextmanager
def install() -> Iterator[None]:
    """Handle SIGINT, SIGTERM and SIGUSR1 for the duration (the CLI wraps every command in this; ``fit``
    too when called from Python). Nested uses share the outer handler. Off the main thread (where Python
    cannot set handlers, e.g. a Ray trial's thread) it does nothing."""
    main = threading.current_thread() is threading.main_thread()
    if main and not _STATE.installed:
        _STATE.signum, _STATE.exit_after_critical, _STATE.raised = None, False, False
        _STATE.pid = os.getpid()
        _STATE.previous = {int(s): signal.signal(s, _handle) for s in HANDLED}
    _STATE.installed += main
    try:
        yield
    finally:
        _STATE.installed -= main
        if main and not _STATE.installed:
            for s, old in _STATE.previous.items():
                signal.signal(s, old)
            _STATE.previous = {}


def requested() -> bool:
    """Whether a stop was asked for (the training loop's question at each step boundary)."""
    return _STATE.signum is not None


def received() -> int | None:
    """The signal that asked to stop, if any."""
    return _STATE.signum


def received_name() -> str:
    return _name(_STATE.signum) if _STATE.signum is not None else "SIGINT"


def exit_code(default: int = 130) -> int:
    return EXIT_CODES.get(_STATE.signum or 0, default)


def acknowledge() -> None:
    """The stop request is being acted on (the training loop stopped at a step and saves a checkpoint):
    leaving a critical section must not raise it again."""
    _STATE.raised = True


def check() -> None:
    """Raise ``Interrupt`` if a stop was asked for (for loops that run inside a graceful section but
    cannot stop at a step boundary, e.g. validation)."""
    if _STATE.signum is not None:
        _STATE.raised = True
        raise Interrupt(_STATE.signum)


def stop() -> NoReturn:
    """Raise ``Interrupt`` for the stop asked for (the training loop, at the step it stops at)."""
    _STATE.raised = True
    raise Interrupt(_STATE.signum or signal.SIGINT)


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Inside: a signal only sets the flag (``requested()``); the caller stops at a safe point."""
    _STATE.graceful += 1
    try:
        yield
    finally:
        _STATE.graceful -= 1


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Inside: signals wait until the block is done (a file write that must complete)."""
    _STATE.critical += 1
    try:
        yield
    finally:
        _STATE.critical -= 1
        if not _STATE.critical and _STATE.exit_after_critical:
            sys.stderr.flush()
            os._exit(exit_code())
    # a signal that waited for the write, outside any graceful section: act on it now
    if not _STATE.critical and not _STATE.graceful and _STATE.signum is not None and not _STATE.raised:
        check()
