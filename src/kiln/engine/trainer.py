"""``fit(cfg)``: build the run from the config, train with checkpoints, resume, report.

Reads top to bottom: build the run (``setup.build_run``: every check before the data) -> (resume) ->
epochs -> test on the best checkpoint -> summary.json. Under torchrun every rank runs this; rank 0 alone
writes files and prints.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch

import kiln.checkpoint as ckpt
from kiln import signals
from kiln.config import Config, dump_config
from kiln.console import log, log_file, log_to_file, quiet
from kiln.engine import distributed
from kiln.engine.callbacks import Callback, FitInfo
from kiln.engine.evaluate import evaluate
from kiln.engine.feeds import EpochInputs
from kiln.engine.finish import finish, write_run_info
from kiln.engine.frozen_head import solve_head, start_metrics
from kiln.engine.init import augmented_samples, sample_images
from kiln.engine.loop import train_one_epoch
from kiln.engine.precision import out_of_memory, resolve_device
from kiln.engine.resume import check_compatible, find_resume, resume_point, stopped
from kiln.engine.run import Run
from kiln.engine.setup import build_run, seed_everything
from kiln.errors import KilnError
from kiln.paths import RunDir
from kiln.registry import import_user_modules


def fit(
    cfg: Config, resume: str | None = None, extra_callbacks: list[Callback] | None = None
) -> dict[str, Any]:
    """Train as the config says. ``resume``: a checkpoint path, or "auto" (the run dir's newest valid one)."""
    import_user_modules(cfg.imports)
    dist = distributed.init(resolve_device(cfg.run.device).type)
    try:
        # rank 0 holds the run folder: a second `kiln train` into it is refused while this one lives
        run_dir = RunDir(cfg.run_dir)
        held = run_dir.hold() if dist.is_main else contextlib.nullcontext()
        with (
            quiet(not dist.is_main),
            held,
            signals.install(),
            log_file(run_dir.log if dist.is_main else None),
        ):
            try:
                summary = _fit(cfg, dist, resume, extra_callbacks or [])
            except KilnError as e:  # the line the CLI prints, and the signal that caused it, in train.log
                if signals.received() is not None:
                    log_to_file(f"kiln: {signals.received_name()} received")
                log_to_file(f"kiln: error: {e}")
                raise
        distributed.barrier(dist)  # no rank tears its process group down while another still talks to it
        return summary
    except torch.OutOfMemoryError:
        raise out_of_memory(cfg.data.batch_size) from None
    finally:
        distributed.shutdown(dist)


def _fit(cfg: Config, dist: distributed.Dist, resume: str | None, extra: list[Callback]) -> dict[str, Any]:
    seed_everything(cfg.run.seed, cfg.run.deterministic, cfg.run.threads)
    device = distributed.device_for(dist, resolve_device(cfg.run.device))
    run = build_run(cfg, dist, device, extra)
    if dist.rank:
        torch.manual_seed(
            cfg.run.seed + dist.rank
        )  # weights were made alike on every rank; now dropout differs
    if resume == "auto":
        resume = find_resume(run.dir)
    if resume:
        saved = ckpt.load(resume)
        check_compatible(resume, run.cfg, saved, run.data.classes)
        run.load_state_dict(saved, resume)
        log(f"kiln: resuming from {resume}: {resume_point(run)}")
    if dist.is_main:
        dump_config(run.cfg, run.dir.config)
        write_run_info(run)
    on = f" x {dist.world} processes" if dist.enabled else ""
    log(
        f"kiln: training {run.cfg.model.name} on {run.cfg.data.source} ({len(run.data.classes)} classes, "
        f"{run.data.train.order.n:,} train images) on {device}{on}, {run.cfg.trainer.epochs} epochs -> "
        f"{run.dir.root}"
    )
    data = run.data
    run.callbacks.fit_start(
        FitInfo(
            run_dir=run.dir.root,
            config=run.cfg.to_dict(),
            classes=list(data.classes),
            start_epoch=run.state.epoch,
            start_step=run.state.step,
            model=run.model,
            samples=lambda: sample_images(data, 16),
            augmented_samples=augmented_samples(data, 16),
            data=data,
            rank=dist.rank,
            world_size=dist.world,
            run=run,
        )
    )
    trained = False
    try:  # a stop anywhere from here on: the one handler, ``resume.stopped``
        if run.start is not None and not resume:
            report_start(run)
        run.start = None  # its features are not needed any more
        stop_reason = train_epochs(run)
        trained = True
        summary = finish(run, stop_reason)
        run.callbacks.fit_end(summary)
    except signals.Interrupt:
        raise stopped(run, trained) from None
    return summary


def report_start(run: Run) -> None:
    """A head that starts solved (model.head_init=probe) is the run's epoch 0: validated, in metrics.jsonl,
    and best.pt until an epoch of fine-tuning beats it."""
    assert run.start is not None
    metrics = start_metrics(run.start.features, run.model, run.start.solved, run.criterion)
    metrics.update(lr=run.optimizer.param_groups[0]["lr"], seconds=run.start.solved.seconds)
    with signals.graceful():
        run.callbacks.epoch_end(0, metrics)
        run.callbacks.checkpoint(0, run.checkpoints.end_epoch(0, metrics, run.state_dict, run.where()))


def train_epochs(run: Run) -> str | None:
    """The epoch loop; returns why it stopped early (or None). A stop raises ``signals.Interrupt``."""
    stop_reason = None
    while run.state.epoch < run.epochs.total:
        metrics = run_epoch(run, run.state.epoch)
        done = metrics["epoch"]  # a solve stands for every frozen epoch
        with signals.graceful():  # the epoch's end (metrics.jsonl, loggers, last.pt) completes first
            stop_reason = run.callbacks.epoch_end(done, metrics)
            if distributed.any_flag(run.dist, stop_reason is not None, run.device):  # all ranks stop together
                stop_reason = stop_reason or "another process asked to stop"
            # written after the callbacks' epoch end: the states it saves are this epoch's
            run.callbacks.checkpoint(
                done, run.checkpoints.end_epoch(done, metrics, run.state_dict, run.where())
            )
        signals.check()  # asked during the epoch's end: it is saved, stop now
        if stop_reason:
            log(f"kiln: {stop_reason}")
            break
    return stop_reason


def run_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Train one epoch (or the fraction a fractional trainer.epochs leaves), then validate."""
    if run.unfreezing.starts(epoch):
        run.unfreeze()
    set_epoch = getattr(run.criterion, "set_epoch", None)
    if callable(set_epoch):  # a loss with a schedule of its own (LDAM's deferred re-weighting)
        set_epoch(epoch)
    t0 = time.perf_counter()
    solving = run.features.solves(epoch)
    first = epoch
    if solving:  # the frozen epochs as one solve, reported as the last of them
        epoch = run.features.frozen_epochs - 1
    else:
        inputs = run.feed.epoch_inputs(epoch)  # a decode or a feature pass happens here, the first time
        inputs.loader.set_epoch(epoch)
    prepare_seconds = time.perf_counter() - t0
    run.callbacks.epoch_start(epoch)  # its training begins now
    if run.state.pending is not None:  # trained before an interrupted validation: validate it now
        train, run.state.pending = run.state.pending, None
    elif solving:
        train = solve_head(run, first)
    else:
        limit = run.epochs.batches(epoch, len(inputs.loader))
        with signals.graceful():  # a stop ends the epoch at a step boundary (loop.Stops)
            train = train_epoch(run, inputs, limit)
    # An epoch trainer.val_every_n_epochs skips reports NaN with validated=false, and moves neither best.pt
    # nor early stopping. A run without a val split reports NaN on every epoch.
    validated = solving or run.epochs.validates(epoch)
    t1 = time.perf_counter()
    try:
        val = validate(run) if validated else {"loss": math.nan, "acc": math.nan}
    except signals.Interrupt:  # the epoch is trained: last.pt keeps it, and a resume validates it first
        run.state.pending = train
        raise
    run.state.epoch = epoch + 1
    extra = {f"val_{k[7:]}": v for k, v in val.items() if k.startswith("metric_")}
    times = {"prepare_seconds": prepare_seconds, "val_seconds": time.perf_counter() - t1}
    lr = run.optimizer.param_groups[0]["lr"]
    val_metrics = {"val_loss": val["loss"], "val_acc": val["acc"], **extra, "validated": validated}
    return {
        "epoch": epoch + 1,
        "step": run.state.step,
        **train,
        **val_metrics,
        "lr": lr,
        **times,
        "seconds": time.perf_counter() - t0,
    }


def train_epoch(run: Run, inputs: EpochInputs, limit: int | None) -> dict[str, Any]:
    """``loop.train_one_epoch`` on what the feed gives for this epoch, with the run's optimizer, schedule,
    scaler and callbacks."""
    return train_one_epoch(
        inputs.model,
        run.criterion,
        run.optimizer,
        inputs.loader,
        inputs.transform,
        run.state,
        inputs.options,
        scheduler=run.scheduler if run.schedule_steps else None,
        scaler=run.scaler,
        ema=run.ema,
        frozen_bn=inputs.frozen_bn,
        callbacks=run.callbacks,
        dist=run.dist,
        should_stop=signals.requested,
        limit=limit,
        after_step=lambda step: run.checkpoints.after_step(step, run.state_dict, run.where()),
    )


def validate(run: Run) -> dict[str, float]:
    """The val split's loss, accuracy and metrics (NaN without a val split)."""
    evaluation = run.feed.eval_inputs("val", run.eval_model)
    if evaluation is None:
        return {"loss": math.nan, "acc": math.nan}
    with signals.graceful():  # a stop ends it within a batch (evaluate.infer checks)
        val = evaluate(
            evaluation.model, evaluation.loader, evaluation.transform, evaluation.options, run.dist
        )
    run.callbacks.eval_end("val", {"loss": val["loss"], "acc": val["acc"]})
    return val
