"""RunDir: the one place that knows the run folder's layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.paths import RunDir


def test_layout_and_resume_candidates(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.last == tmp_path / "checkpoints/last.pt" and run.best == tmp_path / "checkpoints/best.pt"
    assert run.epoch_checkpoint(3) == tmp_path / "checkpoints/epoch-3.pt"
    assert run.metrics.name == "metrics.jsonl" and run.summary.name == "summary.json"
    assert RunDir.of_checkpoint(run.best) == RunDir(tmp_path.resolve())
    assert run.resume_candidates() == []
    run.check_writable()
    for i, p in enumerate([run.epoch_checkpoint(10), run.epoch_checkpoint(2), run.best, run.last]):
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
    assert run.epoch_checkpoints() == [
        run.epoch_checkpoint(2),
        run.epoch_checkpoint(10),
    ]  # by epoch, not name
    assert run.resume_candidates() == [
        run.last,
        run.epoch_checkpoint(2),
        run.epoch_checkpoint(10),
    ]  # newest first


def test_unwritable_run_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(KilnError, match="run.dir: cannot write to .*; choose another run.dir"):
        RunDir(tmp_path / "file" / "run").check_writable()
