"""``RunDir``: the one place that knows the layout of a run folder; ``output_dir``: the one check every
command runs on the folder it writes into (kiln never overwrites what it did not create); ``hold``: a
folder for one process at a time.

<run dir>/config.yaml           the fully resolved config
<run dir>/metrics.jsonl         one JSON line per epoch
<run dir>/summary.json          best epoch and metric, test results
<run dir>/run_info.json         versions, git commit, dataset fingerprint
<run dir>/train.log             every line the run printed (progress too), with timestamps
<run dir>/checkpoints/last.pt   after every epoch (and every N steps, and on Ctrl-C)
<run dir>/checkpoints/best.pt   the best epoch by trainer.checkpoint.monitor
<run dir>/checkpoints/epoch-N.pt  every trainer.checkpoint.every_n_epochs
<run dir>/tensorboard/, wandb/  logger output
<run dir>/eval-<split>/         kiln eval's report
<run dir>/export-<format>/      kiln export's artifacts
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln.errors import KilnError, brief

LOCK = ".kiln.lock"  # in a held folder: who holds it
MARKER = ".kiln"  # in every output folder kiln made or claimed: what made it
# what an output folder of kiln's holds (the marker, or what kiln wrote before there was one: a run folder's
# run_info.json, an export's, an evaluation's or a search's report): kiln may write into it again
KILN_FILES = (MARKER, LOCK, "run_info.json", "export.json", "report.json", "results.json")


def output_dir(path: str | Path, key: str, contents: Literal["kiln", "any", "none"] = "kiln") -> Path:
    """The folder a command writes into, checked before any work: not a file nor below one, creatable and
    writable (a file is written and removed), and not a folder of someone else's files. ``contents``:
    "kiln" (default): new, empty, or an earlier output of kiln's, marked as kiln's; "any": a shared
    parent that may hold anything (a Triton repository: kiln owns only its model folder in it); "none":
    new or empty, not marked (``kiln new``: the folder becomes the user's project)."""
    path = Path(path).expanduser()
    try:
        blocker = next((p for p in [path, *path.parents] if p.exists() or p.is_symlink()), None)
        if blocker == path and not path.is_dir():
            raise KilnError(f"{key}: {path} is a file, not a folder; choose another {key}")
        if blocker is not None and not blocker.is_dir():
            raise KilnError(f"{key}: cannot write to {path} ({blocker} is a file); choose another {key}")
        names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        if names and (contents == "none" or contents == "kiln" and not set(names) & set(KILN_FILES)):
            shown = ", ".join(brief(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            raise KilnError(
                f"{key}: {path} is not empty and holds files kiln did not make ({shown}); kiln never "
                "overwrites what it did not create: choose an empty or new folder"
            )
        path.mkdir(parents=True, exist_ok=True)
        if contents == "kiln" and not (path / MARKER).exists():
            (path / MARKER).write_text(f"made by kiln (pid {os.getpid()}: {' '.join(sys.argv)[:200]})\n")
        probe = path / f".kiln-write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)  # a few kB: a full disk fails here, not after the work
        probe.unlink()
    except OSError as e:
        raise KilnError(f"{key}: cannot write to {path} ({e.strerror or e}); choose another {key}") from None
    return path


@contextlib.contextmanager
def hold(folder: Path, key: str, what: str) -> Iterator[None]:
    """``folder`` for this process alone: another that asks while this one lives is refused with one line
    naming this process. An flock on ``folder/.kiln.lock``: a process that dies (even by kill -9) holds
    nothing, so no stale lock is ever left to clear by hand."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / LOCK, "a+")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise KilnError(f"{key}: cannot write to {folder} ({e.strerror}); choose another {key}") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise KilnError(
                f"{key}: {folder} is in use by {what} that is still going ({who}); wait for it to "
                f"finish, or choose another {key}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}"
        )
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run folder a checkpoint file lives in (``<run dir>/checkpoints/x.pt``)."""
        return cls(Path(checkpoint).resolve().parent.parent)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def run_info(self) -> Path:
        return self.root / "run_info.json"

    @property
    def log(self) -> Path:
        """Every line the run printed, progress included, with timestamps."""
        return self.root / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """The run folder for this process alone while it trains: a second ``kiln train`` into it is
        refused, naming this one. Checked writable first: a full or read-only folder fails before training,
        not at the first checkpoint."""
        self.check_writable()
        return hold(self.root, "run.dir", "a kiln run")

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch}.pt"

    def epoch_checkpoints(self) -> list[Path]:
        """epoch-N.pt files, oldest epoch first."""
        return sorted(self.checkpoints.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def resume_candidates(self) -> list[Path]:
        """Checkpoints to continue from, newest first (best.pt is a copy of an epoch, not a resume point)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob("*.pt") if p != self.best]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def eval_dir(self, split: str) -> Path:
        return self.root / f"eval-{split}"

    def export_dir(self, fmt: str) -> Path:
        return self.root / f"export-{fmt}"

    def check_writable(self) -> None:
        """Fail before training, not at the first checkpoint, when the folder cannot be written or holds
        someone else's files (``output_dir``)."""
        output_dir(self.root, "run.dir")
        try:
            self.checkpoints.mkdir(exist_ok=True)
        except OSError as e:
            raise KilnError(
                f"run.dir: cannot write to {self.checkpoints} ({e.strerror or e}); choose another run.dir"
            ) from None
