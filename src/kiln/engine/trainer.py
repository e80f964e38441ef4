"""``fit(cfg)``: build data, model and optimizer from the config, train with checkpoints, resume, report.

Reads top to bottom: set up -> (resume) -> epochs -> test on the best checkpoint -> summary.json.
Under torchrun every rank runs this; rank 0 alone writes files and prints.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

import kiln.checkpoint as ckpt
from kiln.atomic import write_atomic
from kiln.config import Config, dump_config
from kiln.console import log, quiet
from kiln.data import DataBundle, build
from kiln.engine import distributed
from kiln.engine.callbacks import Callback, CallbackList, FitInfo
from kiln.engine.checkpointing import Checkpointing
from kiln.engine.features import Features
from kiln.engine.loop import TrainState, evaluate, predict, train_one_epoch
from kiln.engine.precision import resolve_device
from kiln.engine.resume import find_resume, make_checkpoint, restore, unfreeze
from kiln.engine.setup import (
    Parts,
    augmented_samples,
    build_callbacks,
    build_parts,
    data_preset,
    sample_images,
    seed_everything,
    write_run_info,
)
from kiln.engine.signals import EXIT_CODES, StopRequest
from kiln.errors import Interrupted, KilnError
from kiln.metrics import Outputs
from kiln.paths import RunDir
from kiln.registry import import_user_modules


def fit(
    cfg: Config, resume: str | None = None, extra_callbacks: list[Callback] | None = None
) -> dict[str, Any]:
    """Train as the config says. ``resume``: a checkpoint path, or "auto" (the run dir's newest valid one)."""
    import_user_modules(cfg.imports)
    d = distributed.init(resolve_device(cfg.run.device).type)
    try:
        # from the start: a Ctrl-C during set-up still ends in a checkpoint at the first step boundary
        # rank 0 holds the run folder: a second `kiln train` into it is refused while this one lives
        held = RunDir(cfg.run_dir).hold() if d.is_main else contextlib.nullcontext()
        with quiet(not d.is_main), held, StopRequest() as stop:
            summary = _fit(cfg, d, resume, extra_callbacks or [], stop)
        distributed.barrier(d)  # no rank tears its process group down while another still talks to it
        return summary
    except torch.OutOfMemoryError:
        raise KilnError(
            f"out of GPU memory at data.batch_size={cfg.data.batch_size}; lower data.batch_size "
            "(and raise trainer.accumulate to keep the effective batch)"
        ) from None
    finally:
        distributed.shutdown(d)


def _fit(
    cfg: Config, d: distributed.Dist, resume: str | None, extra: list[Callback], stop: StopRequest
) -> dict[str, Any]:
    seed_everything(cfg.run.seed, cfg.run.deterministic, cfg.run.threads)
    device = distributed.device_for(d, resolve_device(cfg.run.device))
    run = RunDir(cfg.run_dir)
    if cfg.data.batch_size % d.world:
        raise KilnError(
            f"data.batch_size: {cfg.data.batch_size} (the global batch) does not split evenly over "
            f"{d.world} processes; use a multiple of {d.world}"
        )
    data = build(cfg.data, cfg.run.seed, device, d.rank, d.world, preset=data_preset(cfg))
    parts = build_parts(cfg, data, device, d)
    if d.rank:
        torch.manual_seed(cfg.run.seed + d.rank)  # weights were made alike on every rank; now dropout differs
    state = TrainState()

    def snapshot(metrics: dict[str, Any]) -> dict[str, Any]:  # the payload, with every callback's state
        return make_checkpoint(cfg, parts, state, callbacks, data, d, metrics)

    checkpointer = Checkpointing(run, snapshot, cfg.trainer.checkpoint, writes=d.is_main)
    callbacks = CallbackList([*build_callbacks(cfg, run, parts, data, d), *extra, checkpointer])
    if resume == "auto":
        resume = find_resume(run)
        if resume:
            log(f"kiln: resuming from {resume}")
    if resume:
        restore(resume, cfg, parts, state, callbacks, data, d)
    if d.is_main:
        dump_config(cfg, run.config)
        write_run_info(run, data)
    log(
        f"kiln: training {cfg.model.name} on {cfg.data.source} ({len(data.classes)} classes, "
        f"{data.train.order.n} train images) on {device}{f' x {d.world} processes' if d.enabled else ''}, "
        f"{cfg.trainer.epochs} epochs -> {run.root}"
    )
    callbacks.fit_start(
        FitInfo(
            run_dir=run.root,
            config=cfg.to_dict(),
            classes=list(data.classes),
            start_epoch=state.epoch,
            start_step=state.step,
            model=parts.model,
            sample_images=sample_images(data, 16),
            augmented_samples=augmented_samples(data, 16),
            data=data,
            rank=d.rank,
            world_size=d.world,
        )
    )
    stop_reason = train_epochs(cfg, parts, state, data, callbacks, run, d, stop)
    summary = finish(cfg, parts, state, data, callbacks, run, d, checkpointer, stop_reason)
    callbacks.fit_end(summary)
    return summary


def train_epochs(
    cfg: Config,
    parts: Parts,
    state: TrainState,
    data: DataBundle,
    callbacks: CallbackList,
    run: RunDir,
    d: distributed.Dist,
    stop: StopRequest,
) -> str | None:
    """The epoch loop; returns why it stopped early (or None). Ctrl-C: checkpoint, then Interrupted."""
    epochs, stop_reason, init_seconds = math.ceil(cfg.trainer.epochs), None, parts.init_seconds
    for epoch in range(state.epoch, epochs):
        metrics = run_epoch(cfg, parts, state, data, callbacks, epoch, d, stop)
        if metrics.get("interrupted"):
            callbacks.interrupt(epoch, state.step)  # checkpointing writes last.pt
            raise Interrupted(
                f"interrupted at epoch {epoch + 1}, step {state.step}; saved {run.last}. Resume with:\n"
                f"  kiln train -c {run.config} --resume {run.last}",
                EXIT_CODES.get(stop.signum or 2, 130),
            )
        # a data-dependent init (model.pca_init) is training work: the first epoch this process runs includes it
        metrics["seconds"] += init_seconds
        init_seconds = 0.0
        stop_reason = callbacks.epoch_end(epoch + 1, metrics)  # checkpointing runs last: last.pt, best.pt
        if distributed.any_flag(d, stop_reason is not None, data.train.device):  # type: ignore[union-attr]  # all ranks stop together
            stop_reason = stop_reason or "another process asked to stop"
        callbacks.checkpoint(epoch + 1, run.last)
        if stop_reason:
            log(f"kiln: {stop_reason}")
            break
    return stop_reason


def run_epoch(
    cfg: Config,
    parts: Parts,
    state: TrainState,
    data: DataBundle,
    callbacks: CallbackList,
    epoch: int,
    d: distributed.Dist,
    stop: StopRequest,
) -> dict[str, Any]:
    """Train one epoch (or the fraction a fractional trainer.epochs leaves), then validate."""
    epochs, train = math.ceil(cfg.trainer.epochs), data.train
    train.set_epoch(epoch)  # type: ignore[union-attr]
    if cfg.trainer.unfreeze and epoch + 1 == cfg.trainer.unfreeze.at_epoch:
        unfreeze(cfg, parts)
    callbacks.epoch_start(epoch)
    t0 = time.perf_counter()
    limit = math.ceil((cfg.trainer.epochs - epoch) * len(train)) if epoch + 1 == epochs else None  # type: ignore[arg-type]
    unfrozen = cfg.trainer.unfreeze is not None and epoch + 1 >= cfg.trainer.unfreeze.at_epoch
    feats = parts.features if parts.features is not None and not unfrozen else None
    if feats is not None:  # a frozen backbone: the head trains on features computed once per view
        model, loader, transform, opts = (
            feats.head_of(parts.model),
            feats.train_loader(epoch),
            Features(),
            feats.step_options,
        )
    else:
        model, loader, transform, opts = parts.train_model, train, data.transform, parts.step
    train_m = train_one_epoch(
        model,
        parts.criterion,
        parts.optimizer,
        loader,
        transform,
        state,
        opts,  # type: ignore[arg-type]
        scheduler=parts.scheduler if parts.schedule_steps else None,
        scaler=parts.scaler,
        ema=parts.ema,
        frozen_bn=() if feats else parts.frozen_batchnorms(),
        callbacks=callbacks,
        dist=d,
        should_stop=stop,
        limit=limit,
    )
    if train_m["interrupted"]:
        return train_m
    # An epoch trainer.val_every_n_epochs skips reports NaN with validated=false, and moves neither best.pt
    # nor early stopping. A run without a val split reports NaN on every epoch.
    validated = (epoch + 1) % cfg.trainer.val_every_n_epochs == 0 or epoch + 1 == epochs
    val = {"loss": math.nan, "acc": math.nan}
    if validated and data.val is not None and feats is not None:
        head = feats.head_of(ckpt.unwrap(parts.eval_model))
        val = evaluate(head, feats.val_loader(), Features(), feats.eval_options, d)  # type: ignore[arg-type]
    elif validated and data.val is not None:
        val = evaluate(parts.eval_model, data.val, data.transform, parts.eval, d)
    state.epoch = epoch + 1
    if validated:
        callbacks.eval_end("val", {"loss": val["loss"], "acc": val["acc"]})
    return {
        "epoch": epoch + 1,
        "step": state.step,
        **train_m,
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        **{f"val_{k[7:]}": v for k, v in val.items() if k.startswith("metric_")},
        "validated": validated,
        "lr": parts.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - t0,
    }


def finish(
    cfg: Config,
    parts: Parts,
    state: TrainState,
    data: DataBundle,
    callbacks: CallbackList,
    run: RunDir,
    d: distributed.Dist,
    checkpointer: Checkpointing,
    stop_reason: str | None,
) -> dict[str, Any]:
    """Measure the test split on the *best* checkpoint (read back from disk) and write summary.json."""
    summary: dict[str, Any] = {
        "best_epoch": checkpointer.best_epoch,
        "best_metric": checkpointer.best,
        "monitor": cfg.trainer.checkpoint.monitor,
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": stop_reason,
        "classes": list(data.classes),
        "best_checkpoint": str(run.best),
        "world_size": d.world,
        "skipped_steps": state.skipped_steps,
        "skipped_samples": data.skipped,
    }
    distributed.barrier(d)  # rank 0 has finished writing best.pt
    if data.test is not None and run.best.exists():
        ckpt.unwrap(parts.eval_model).load_state_dict(ckpt.load(run.best)["model_state_dict"])
        t0 = time.perf_counter()
        logits, labels, idx = predict(parts.eval_model, data.test, data.transform, parts.eval, d)  # all ranks
        test = {
            "loss": F.cross_entropy(logits, labels).item(),
            "accuracy": (logits.argmax(1) == labels).double().mean().item(),
            "num_samples": int(labels.numel()),
            "seconds": time.perf_counter() - t0,
        }
        summary["test"] = test
        log(
            f"kiln: test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}, {test['num_samples']} images, "
            f"best epoch {checkpointer.best_epoch})"
        )
        callbacks.eval_end(
            "test",
            {"loss": test["loss"], "acc": test["accuracy"]},
            Outputs(logits, labels, idx, list(data.classes)),
        )
    if d.is_main:
        write_atomic(run.summary, json.dumps(summary, indent=2))
    return summary
