"""What the driver says while a search runs, as plain lines that read the same in a terminal and in a log
file: one when a trial starts (its sampled values), one per epoch it reports (the monitored metric and
the trial's best so far), one when it ends (finished, stopped early, failed and why), and a heartbeat
every ~15 s (trials running / pending / finished / failed, the best so far, elapsed time and a rough ETA).

A Ray Tune callback on the driver; this module imports Ray, so import it only once `import_ray()` worked.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from kiln.console import log
from kiln.tuning.report import error_line
from kiln.tuning.search import Search, trial_name

LIVE = (Trial.PENDING, Trial.RUNNING, Trial.PAUSED)
# KILN_TUNE_HEARTBEAT_S: seconds between status lines while trials run
HEARTBEAT_S = float(os.environ.get("KILN_TUNE_HEARTBEAT_S", "15"))


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class SearchLog(Callback):
    def __init__(
        self,
        search: Search,
        keys: list[str],
        heartbeat_s: float = HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.search, self.keys, self.heartbeat_s, self.clock = search, keys, heartbeat_s, clock
        self.total = 0  # trials the search samples in all
        self.statuses: dict[str, str] = {}  # trial_00003 -> Ray's status at the end of the last step
        self.epochs_run = 0  # epochs reported to this process (a resumed search counts afresh)
        self.started = self.last_beat = clock()

    # --- what one trial says -------------------------------------------------------------------------
    def epochs(self, trial: Trial) -> int:
        return math.ceil(trial.config.get("trainer.epochs", self.search.epochs))

    def best(self, trial: Trial, latest: float | None = None) -> float:
        """The trial's best monitored value so far (Ray's own tally, kept across a resume)."""
        seen = trial.metric_analysis.get(self.search.monitor, {}).get(self.search.mode)
        values = [v for v in (seen, latest) if v is not None and v == v]
        if not values:
            return math.nan
        return max(values) if self.search.mode == "max" else min(values)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        values = "  ".join(f"{k}={shown(trial.config[k])}" for k in self.keys if k in trial.config)
        done = trial.last_result.get("epoch")
        verb = f"resumed after epoch {done}/{self.epochs(trial)}" if done else "started"
        log(f"{trial_name(trial.trial_id)} {verb}: {values}")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.epochs_run += 1
        metric = result.get(self.search.monitor, math.nan)
        log(
            f"{trial_name(trial.trial_id)} epoch {result.get('epoch', '?')}/{self.epochs(trial)}  "
            f"{self.search.monitor} {metric:.4f}  best {self.best(trial, metric):.4f}"
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        done, epochs = trial.last_result.get("epoch", 0), self.epochs(trial)
        how = "finished" if done >= epochs else "stopped early by the scheduler"
        log(
            f"{trial_name(trial.trial_id)} {how} after epoch {done}/{epochs}: "
            f"best {self.search.monitor} {self.best(trial):.4f}"
        )

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # Ray has just written the error to the driver's staging copy (the trial folder gets it at the next
        # sync: Trial.get_error(), which reads that one, still finds nothing here)
        staged = Path(trial.error_file) if trial.error_file else None
        reason = error_line(staged.read_text()) if staged and staged.is_file() else None
        where = f" (full trace: {Path(trial.path) / staged.name})" if staged and trial.path else ""
        log(f"{trial_name(trial.trial_id)} failed: {reason or 'no reason recorded'}{where}")

    # --- the whole search -------------------------------------------------------------------------------
    def setup(
        self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any
    ) -> None:
        self.total = int(total_num_samples or 0)
        self.started = self.last_beat = self.clock()
        self.epochs_run = 0

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        # kept each step: on an interrupt Tune's cleanup marks the trials it stops TERMINATED
        self.statuses = {trial_name(t.trial_id): t.status for t in trials}
        now = self.clock()
        running = any(t.status in LIVE for t in trials) or len(trials) < self.total
        if running and now - self.last_beat >= self.heartbeat_s:
            self.last_beat = now
            log(self.heartbeat(trials, now))

    def unfinished(self) -> set[str]:
        """The trials still running or waiting when the search loop ended (an interrupt)."""
        return {name for name, status in self.statuses.items() if status in LIVE}

    def heartbeat(self, trials: list[Trial], now: float) -> str:
        count = {
            s: sum(t.status == s for t in trials) for s in (Trial.RUNNING, Trial.TERMINATED, Trial.ERROR)
        }
        pending = len(trials) - sum(count.values()) + max(0, self.total - len(trials))
        stopped = sum(
            t.status == Trial.TERMINATED and t.last_result.get("epoch", 0) < self.epochs(t) for t in trials
        )
        sign = 1 if self.search.mode == "max" else -1
        scored = [(value, t) for t in trials if (value := self.best(t)) == value]  # NaN: nothing reported
        best = max(scored, key=lambda pair: sign * pair[0], default=None)
        best_text = (
            f"best {trial_name(best[1].trial_id)} {self.search.monitor} {best[0]:.4f}"
            if best
            else "no result yet"
        )
        elapsed = now - self.started
        return (
            f"search: {count[Trial.RUNNING]} running, {pending} pending, "
            f"{count[Trial.TERMINATED]} finished ({stopped} stopped early), {count[Trial.ERROR]} failed; "
            f"{best_text}; {duration(elapsed)} elapsed, {self.eta(trials, elapsed)}"
        )

    def eta(self, trials: list[Trial], elapsed: float) -> str:
        """Epochs still to run at the pace this process has seen: an upper bound when ASHA stops trials."""
        if not self.epochs_run:
            return "eta ?"
        left = sum(self.epochs(t) - t.last_result.get("epoch", 0) for t in trials if t.status in LIVE)
        left += max(0, self.total - len(trials)) * self.search.epochs
        return f"eta ~{duration(left * elapsed / self.epochs_run)}"


class DropRayInterruptLines(logging.Filter):
    """Ray Tune's own lines on an interrupt ("press Ctrl-C again", "resume with Tuner.restore(...)",
    the list of unfinished trials): kiln says it for `kiln tune` instead (--resume, the table)."""

    PREFIXES = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def quiet_ray_interrupt_lines() -> None:
    logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, DropRayInterruptLines) for f in logger.filters):
        logger.addFilter(DropRayInterruptLines())
