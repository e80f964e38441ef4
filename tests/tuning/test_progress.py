"""The driver's lines about a search, from real Ray Tune Trial objects (no Ray started) and a clock the test
moves: what each line says, the heartbeat's interval, counts and ETA, and which trials an interrupt leaves."""

from __future__ import annotations

import pytest

from kiln.tuning.search import Search
from tests.conftest import ROOT

pytest.importorskip("ray.tune", reason="ray[tune] is an optional extra (pip install 'torchkiln[tune]')")

from ray.tune.experiment import Trial  # noqa: E402

from kiln.tuning.progress import SearchLog  # noqa: E402

SEARCH = Search(str(ROOT / "configs/digits.yaml"), [], "val_acc", "max", 4, 1.0, 0.0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trial(index: int, status: str = Trial.PENDING, lr: float = 0.01) -> Trial:
    trial = Trial("run_trial", config={"optimizer.lr": lr}, trial_id=f"ab12c_{index:05d}", stub=True)
    trial.set_status(status)
    return trial


def _report(search_log: SearchLog, trial: Trial, epoch: int, val_acc: float) -> None:
    """What Tune does with one result: the callback first, then the trial's own record of it."""
    result = {"epoch": epoch, "val_acc": val_acc, "training_iteration": epoch}
    search_log.on_trial_result(0, [trial], trial, result)
    trial.update_last_result(result)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_a_trials_lines_name_it_and_say_its_values_epochs_metric_and_best(
    capsys: pytest.CaptureFixture[str],
) -> None:
    search_log, trial = SearchLog(SEARCH, ["optimizer.lr"]), _trial(3, Trial.RUNNING, lr=0.0123456)
    search_log.on_trial_start(0, [trial], trial)
    _report(search_log, trial, 1, 0.5)
    _report(search_log, trial, 2, 0.25)
    search_log.on_trial_complete(0, [trial], trial)
    assert _lines(capsys) == [
        "trial_00003 started: optimizer.lr=0.01235",
        "trial_00003 epoch 1/4  val_acc 0.5000  best 0.5000",
        "trial_00003 epoch 2/4  val_acc 0.2500  best 0.5000",
        "trial_00003 stopped early by the scheduler after epoch 2/4: best val_acc 0.5000",
    ]


def test_a_resumed_trial_says_where_it_continues(capsys: pytest.CaptureFixture[str]) -> None:
    search_log, trial = SearchLog(SEARCH, ["optimizer.lr"]), _trial(1, Trial.RUNNING)
    trial.update_last_result({"epoch": 2, "val_acc": 0.5, "training_iteration": 2})  # restored state
    search_log.on_trial_start(0, [trial], trial)
    assert _lines(capsys) == ["trial_00001 resumed after epoch 2/4: optimizer.lr=0.01"]


def test_heartbeat_every_interval_with_counts_best_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    search_log = SearchLog(SEARCH, ["optimizer.lr"], heartbeat_s=15, clock=clock)
    search_log.setup(total_num_samples=4)
    done, running, waiting = _trial(0, Trial.RUNNING), _trial(1, Trial.RUNNING), _trial(2)
    for epoch, val_acc in enumerate([0.5, 0.7, 0.8, 0.75], 1):
        _report(search_log, done, epoch, val_acc)
    done.set_status(Trial.TERMINATED)
    for epoch, val_acc in enumerate([0.4, 0.6], 1):
        _report(search_log, running, epoch, val_acc)
    capsys.readouterr()
    trials = [done, running, waiting]  # the 4th trial is not created yet
    clock.now = 14.9
    search_log.on_step_end(0, trials)
    assert _lines(capsys) == []  # not yet 15 s
    clock.now = 15.0
    search_log.on_step_end(1, trials)
    # 6 epochs in 15 s: 2.5 s each; left: 2 of trial_00001, 4 of trial_00002, 4 of the one to come
    assert _lines(capsys) == [
        "search: 1 running, 2 pending, 1 finished (0 stopped early), 0 failed; "
        "best trial_00000 val_acc 0.8000; 15s elapsed, eta ~25s"
    ]
    clock.now = 29.0
    search_log.on_step_end(2, trials)
    assert _lines(capsys) == []  # 14 s after the last one


def test_no_heartbeat_once_nothing_runs_or_waits(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    search_log = SearchLog(SEARCH, ["optimizer.lr"], heartbeat_s=15, clock=clock)
    search_log.setup(total_num_samples=1)
    clock.now = 60.0
    search_log.on_step_end(0, [_trial(0, Trial.TERMINATED)])
    assert _lines(capsys) == []


def test_unfinished_are_the_trials_running_or_waiting_at_the_last_step() -> None:
    search_log = SearchLog(SEARCH, ["optimizer.lr"])
    trials = [_trial(0, Trial.TERMINATED), _trial(1, Trial.RUNNING), _trial(2), _trial(3, Trial.ERROR)]
    search_log.on_step_end(0, trials)
    trials[1].set_status(Trial.TERMINATED)  # what Tune's cleanup does to a trial it stops on an interrupt
    assert search_log.unfinished() == {"trial_00001", "trial_00002"}
