"""Atomic file writes: the target holds its old contents or the whole new ones, never a torn file, even when
the process is killed or the disk fills mid-write. Written to a temp file in the same folder (named after
the writer's pid, so a dead writer's leftovers can be recognised), fsynced, renamed, and the rename
fsynced."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kiln import signals


def temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def remove_stale_temps(folder: Path) -> list[Path]:
    """The temp files (``temp_path``) of writers that are no longer alive (killed mid-write)."""
    removed = []
    for tmp in folder.glob(".*.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def write_with(target: Path, write: Callable[[BinaryIO], object], critical: bool = True) -> None:
    """``write(f)`` into a temp file, then rename it to ``target``; on any failure the temp file goes.
    ``critical``: a signal waits until the write is complete (checkpoints, summaries); a long cache write
    passes False and may be abandoned (its temp file goes, nothing half-written is trusted)."""
    with signals.critical() if critical else contextlib.nullcontext():
        _write(target, write)


def _write(target: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = temp_path(target)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def write_atomic(target: Path, data: str | bytes) -> None:
    payload = data.encode() if isinstance(data, str) else data
    write_with(target, lambda f: f.write(payload))
