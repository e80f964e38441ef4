"""Progress lines when the output is not a terminal: the rate and ETA at least every `every` seconds, even
when updates come seconds apart (training steps of a big model on a CPU). Fast tier: a real clock, ~1 s."""

from __future__ import annotations

import time

import pytest

from kiln.console import Progress


def test_sparse_updates_speak_before_the_interval_runs_out(capsys: pytest.CaptureFixture[str]) -> None:
    # updates 0.3 s apart with every=0.5: waiting for the second update would leave 0.6 s without a line
    progress = Progress("steps", 4, "step", bar=False, every=0.5, announce=False)
    stamps = []
    for done in range(1, 5):
        time.sleep(0.3)
        progress.set(done)
        if "steps: " in capsys.readouterr().out:
            stamps.append(done)
    assert stamps[0] == 1  # the first update already: the next one would come too late


def test_frequent_updates_speak_once_per_interval(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("images", 1000, bar=False, every=0.2, announce=False)
    for done in range(1, 101):
        time.sleep(0.005)  # 0.5 s in all
        progress.set(done)
    lines = [line for line in capsys.readouterr().out.splitlines() if "images: " in line]
    assert 1 <= len(lines) <= 3
