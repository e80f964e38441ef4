"""Stopping and resuming: the one handler of a stop (``stopped``: what was kept, what was skipped, how to go
on), which checkpoint ``--resume auto`` picks (``find_resume``), where a resumed run continues
(``resume_point``), and refusing a checkpoint of another model, optimizer or dataset
(``check_compatible``). What a checkpoint holds and how a run goes back to it are ``Run.state_dict`` /
``Run.load_state_dict`` (``run.py``)."""

from __future__ import annotations

from typing import Any

import kiln.checkpoint as ckpt
from kiln import signals
from kiln.config import Config
from kiln.console import log
from kiln.engine.run import Run
from kiln.errors import CheckpointError, Interrupted
from kiln.paths import RunDir


def stopped(run: Run, trained: bool) -> Interrupted:
    """The one handler of a stop (Ctrl-C, SIGTERM, SIGUSR1), wherever it came: ``last.pt`` written where the
    run stands (unless it holds that already), and one line saying what was kept and how to go on.
    ``trained``: the epochs are over (the stop came in the test evaluation or the loggers' last entries).
    The exit code is 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1."""
    signals.acknowledge()  # acted on now: the checkpoint's write must not raise it again
    state, name, code = run.state, signals.received_name(), signals.exit_code()
    if trained or state.epoch >= run.epochs.total:
        return Interrupted(
            f"interrupted ({name}) after the last epoch: training is complete, in {run.dir.best} and "
            f"{run.dir.last}; skipped: the test evaluation, summary.json and the loggers' final entries. "
            "Finish them with:\n"
            f"  kiln train -c {run.dir.config} --resume auto",
            code,
        )
    if state.step == 0 and state.epoch == 0 and state.pending is None:
        return Interrupted(
            f"interrupted ({name}) before the first step: no checkpoint yet; the decoded images and "
            "features finished so far are cached",
            code,
        )
    run.checkpoints.save_last(run.state_dict, run.where())
    run.callbacks.interrupt(state.epoch, state.step)
    return Interrupted(
        f"interrupted ({name}) at epoch {state.epoch + 1}, step {state.step}; saved {run.dir.last}. "
        f"{resume_hint(run)}",
        code,
    )


def resume_hint(run: Run) -> str:
    return f"Resume with:\n  kiln train -c {run.dir.config} --resume {run.dir.last}"


def resume_point(run: Run) -> str:
    """Where a resumed run continues, in words."""
    epochs, state = run.epochs.total, run.state
    position = run.feed.state_dict()["position"]
    where = f"{position} of {len(run.data.train)} batches into epoch {state.epoch + 1}" if position else ""
    if state.pending is not None:
        where = f"epoch {state.epoch + 1} trained, its validation next"
    return f"{state.epoch} of {epochs} epochs done, step {state.step:,}" + (f", {where}" if where else "")


def check_compatible(path: str, cfg: Config, saved: dict[str, Any], classes: list[str]) -> None:
    """Refuse a checkpoint of another model, optimizer, data source or class list, naming what differs."""
    trained_on = saved["recipe"]["classes"]
    if trained_on != list(classes):
        raise CheckpointError(
            f"{path}: trained on classes {str(trained_on)[:200]}, but the data now has "
            f"{str(list(classes))[:200]}; resume with the same data"
        )
    old = saved["config"]
    for section, keys in (("model", None), ("optimizer", ("name",)), ("data", ("source",))):
        diff = config_diff(old[section], cfg.to_dict()[section], section, keys)
        if diff:
            raise CheckpointError(
                f"{path}: the {section} differs from the checkpoint's ({'; '.join(diff)}); "
                f"resume with the same {section} settings, or start anew from its weights "
                f"with model.pretrained={path}"
            )


def config_diff(
    old: dict[str, Any], new: dict[str, Any], prefix: str, keys: tuple[str, ...] | None
) -> list[str]:
    """'key: old -> new' for the keys (all when None) whose values differ."""
    names = keys if keys is not None else sorted(set(old) | set(new))
    return [f"{prefix}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in names if old.get(k) != new.get(k)]


def find_resume(run: RunDir) -> str | None:
    """`--resume auto`: the newest checkpoint of the run dir that loads, or None (a fresh start).
    A damaged newest file (a crash mid-write cannot leave one, but a disk can) is skipped with a note."""
    for p in run.resume_candidates():
        try:
            ckpt.load(p)
            return str(p)
        except CheckpointError as e:
            log(f"kiln: skipping {p}: {e}")
    log(f"kiln: --resume auto: no checkpoint in {run.root / 'checkpoints'} yet; starting from the beginning")
    return None
