"""``fit(cfg)``: build data, model and optimizer from the config, train with checkpoints, resume, report.

Reads top to bottom: set up -> (resume) -> epochs -> test on the best checkpoint -> summary.json.
Under torchrun every rank runs this; rank 0 alone writes files and prints.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kiln import data as kdata
from kiln.config import Config, dump_config
from kiln.engine import checkpoint as ckpt
from kiln.engine import distributed, progress
from kiln.engine.callbacks import Callback, is_better, skipped_validation
from kiln.engine.loop import Engine, TrainState, evaluate, predict, train_one_epoch
from kiln.engine.precision import resolve_device
from kiln.engine.progress import EpochBar, enabled, epoch_line, log
from kiln.engine.resume import find_resume, make_checkpoint, restore, save_epoch_checkpoints, unfreeze
from kiln.engine.setup import (
    build_callbacks,
    build_engine,
    check_writable,
    sample_images,
    seed_everything,
    write_run_info,
)
from kiln.engine.signals import EXIT_CODES, StopRequest
from kiln.errors import Interrupted, KilnError
from kiln.evaluation.metrics import Outputs
from kiln.registry import import_user_modules


def fit(
    cfg: Config, resume: str | None = None, extra_callbacks: list[Callback] | None = None
) -> dict[str, Any]:
    """Train as the config says. ``resume``: a checkpoint path, or "auto" (the run dir's newest valid one)."""
    import_user_modules(cfg.imports)
    d = distributed.init(resolve_device(cfg.run.device).type)
    progress.QUIET = not d.is_main
    try:
        # from the start: a Ctrl-C during set-up still ends in a checkpoint at the first step boundary
        with StopRequest() as stop:
            summary = _fit(cfg, d, resume, extra_callbacks, stop)
        distributed.barrier(d)  # no rank tears its process group down while another still talks to it
        return summary
    except torch.OutOfMemoryError:
        raise KilnError(f"out of GPU memory at data.batch_size={cfg.data.batch_size}; lower data.batch_size "
                        "(and raise trainer.accumulate to keep the effective batch)") from None  # fmt: skip
    finally:
        progress.QUIET = False
        distributed.shutdown(d)


def _fit(
    cfg: Config, d: distributed.Dist, resume: str | None, extra: list[Callback] | None, stop: StopRequest
) -> dict[str, Any]:
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = distributed.device_for(d, resolve_device(cfg.run.device))
    run_dir = cfg.run_dir
    if d.is_main:
        check_writable(run_dir)
    if cfg.data.batch_size % d.world:
        raise KilnError(f"data.batch_size: {cfg.data.batch_size} (the global batch) does not split evenly over "
                        f"{d.world} processes; use a multiple of {d.world}")  # fmt: skip
    bundle = kdata.build(cfg.data, cfg.run.seed, device, d.rank, d.world)
    callbacks = build_callbacks(cfg, run_dir, d, extra)
    engine = build_engine(cfg, bundle, device, callbacks, d)
    if d.rank:
        torch.manual_seed(cfg.run.seed + d.rank)  # weights were made alike on every rank; now dropout differs
    state = TrainState()
    if resume == "auto":
        resume = find_resume(run_dir)
        if resume:
            log(f"kiln: resuming from {resume}")
    if resume:
        restore(resume, cfg, engine, state, bundle)
    if d.is_main:
        dump_config(cfg, run_dir / "config.yaml")
        write_run_info(run_dir, bundle)
    if cfg.trainer.checkpoint.every_n_steps:
        engine.step_hook = step_checkpointer(cfg, engine, state, bundle, run_dir)
    log(f"kiln: training {cfg.model.name} on {cfg.data.source} ({len(bundle.classes)} classes, "
        f"{bundle.train.order.n} train images) on {device}{f' x {d.world} processes' if d.enabled else ''}, "
        f"{cfg.trainer.epochs} epochs -> {run_dir}")  # fmt: skip
    info = {"start_epoch": state.epoch, "run_dir": str(run_dir), "config": cfg.to_dict(), "classes": bundle.classes,
            "model": ckpt.unwrap(engine.model), "sample_images": sample_images(bundle, 16),  # normalised
            "augment": lambda x, idx: bundle.transform(x, idx, 0, 0, train=True), "bundle": bundle,
            "rank": d.rank, "world_size": d.world, "start_step": state.step}  # fmt: skip
    for cb in callbacks:
        cb.on_fit_start(info)

    engine.should_stop = stop
    stop_reason = train_epochs(cfg, engine, state, bundle, callbacks, run_dir)
    summary = finish(cfg, engine, state, bundle, run_dir, stop_reason)
    for cb in callbacks:
        cb.on_fit_end(summary)
    return summary


def train_epochs(cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle,
                 callbacks: list[Callback], run_dir: Path) -> str | None:  # fmt: skip
    """The epoch loop; returns why it stopped early (or None). Ctrl-C: checkpoint, then Interrupted."""
    d, device, epochs, stop_reason = engine.dist, engine.device, math.ceil(cfg.trainer.epochs), None
    for epoch in range(state.epoch, epochs):
        metrics = run_epoch(cfg, engine, state, bundle, epoch, epochs)
        if metrics.get("interrupted"):
            payload = make_checkpoint(cfg, engine, state, bundle, {})
            path = run_dir / "checkpoints" / "last.pt"
            if d.is_main:
                ckpt.save(payload, path)
            signum = getattr(engine.should_stop, "signum", None) or 2
            raise Interrupted(f"interrupted at epoch {epoch + 1}, step {state.step}; saved {path}. Resume with:\n"
                              f"  kiln train -c {run_dir / 'config.yaml'} --resume {path}",
                              EXIT_CODES.get(signum, 130))  # fmt: skip
        for cb in callbacks:
            stop_reason = cb.on_epoch_end(epoch + 1, metrics) or stop_reason
        if distributed.any_flag(d, stop_reason is not None, device):  # all ranks stop together
            stop_reason = stop_reason or "another process asked to stop"
        improved = update_best(cfg, state, metrics)
        payload = make_checkpoint(cfg, engine, state, bundle, metrics)  # every rank: gathers RNG states
        if d.is_main:
            save_epoch_checkpoints(cfg, run_dir, payload, improved)
        for cb in callbacks:
            cb.on_checkpoint(epoch + 1, run_dir / "checkpoints" / "last.pt")
        log(epoch_line(metrics, epochs))
        if stop_reason:
            log(f"kiln: {stop_reason}")
            break
    return stop_reason


def step_checkpointer(
    cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle, run_dir: Path
):  # type: ignore[no-untyped-def]
    """Mid-epoch checkpoints: last.pt every N optimizer steps, with the data position, so a resumed run
    continues step for step where this one was."""
    every = cfg.trainer.checkpoint.every_n_steps

    def hook(step: int) -> None:
        if step % every == 0:
            payload = make_checkpoint(cfg, engine, state, bundle, {"step": step})
            if engine.dist.is_main:
                ckpt.save(payload, run_dir / "checkpoints" / "last.pt")

    return hook


def run_epoch(cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle, epoch: int,
              epochs: int) -> dict[str, Any]:  # fmt: skip
    """Train one epoch (or the fraction a fractional trainer.epochs leaves), then validate."""
    bundle.train.set_epoch(epoch)
    if cfg.trainer.unfreeze and epoch + 1 == cfg.trainer.unfreeze.at_epoch:
        unfreeze(cfg, engine)
    for cb in engine.callbacks:
        cb.on_epoch_start(epoch)
    t0 = time.perf_counter()
    limit = math.ceil((cfg.trainer.epochs - epoch) * len(bundle.train)) if epoch + 1 == epochs else None
    bar = None
    if enabled(cfg.trainer.progress) and not progress.QUIET:
        bar = EpochBar(epoch + 1, epochs, limit or len(bundle.train), bundle.train.state_dict()["position"])
    try:
        train_m = train_one_epoch(engine, bundle.train, state, bar, limit)
    finally:
        if bar is not None:
            bar.close()
    if train_m["interrupted"]:
        return train_m
    # An epoch trainer.val_every_n_epochs skips reports NaN with validated=false, and moves neither best.pt
    # nor early stopping. A run without a val split reports NaN on every epoch, as it always has.
    validated = (epoch + 1) % cfg.trainer.val_every_n_epochs == 0 or epoch + 1 == epochs
    val = (
        evaluate(engine, bundle.val)
        if validated and bundle.val is not None
        else {"loss": math.nan, "acc": math.nan}
    )
    state.epoch = epoch + 1
    if validated:
        for cb in engine.callbacks:
            cb.on_eval_end("val", {"loss": val["loss"], "acc": val["acc"]})
    # a data-dependent init (model.pca_init) is training work: the first epoch this process runs includes it
    init_s, engine.init_seconds = engine.init_seconds, 0.0
    return {"epoch": epoch + 1, "step": state.step, **train_m, "val_loss": val["loss"], "val_acc": val["acc"],
            **{f"val_{k[7:]}": v for k, v in val.items() if k.startswith("metric_")}, "validated": validated,
            "lr": engine.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0 + init_s}  # fmt: skip


def update_best(cfg: Config, state: TrainState, metrics: dict[str, Any]) -> bool:
    mon = cfg.trainer.checkpoint
    if mon.monitor not in metrics:
        raise KilnError(f"trainer.checkpoint.monitor: '{mon.monitor}' is not a metric "
                        f"(metrics: {', '.join(sorted(metrics))})")  # fmt: skip
    value = metrics[mon.monitor]
    if skipped_validation(metrics, mon.monitor):
        return False  # best.pt stays as it is
    improved = math.isnan(value) or is_better(value, state.best_metric, mon.mode)
    if improved:
        state.best_metric, state.best_epoch = value, metrics["epoch"]
    return improved


def finish(cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle, run_dir: Path,
           stop_reason: str | None) -> dict[str, Any]:  # fmt: skip
    """Measure the test split on the *best* checkpoint (read back from disk) and write summary.json."""
    summary: dict[str, Any] = {
        "best_epoch": state.best_epoch, "best_metric": state.best_metric,
        "monitor": cfg.trainer.checkpoint.monitor, "epochs_run": state.epoch, "steps": state.step,
        "stopped_early": stop_reason, "classes": list(bundle.classes),
        "best_checkpoint": str(run_dir / "checkpoints" / "best.pt"), "world_size": engine.dist.world,
        "skipped_steps": state.skipped_steps, "skipped_samples": bundle.skipped,
    }  # fmt: skip
    best_path = run_dir / "checkpoints" / "best.pt"
    distributed.barrier(engine.dist)  # rank 0 has finished writing best.pt
    if bundle.test is not None and best_path.exists():
        ckpt.unwrap(engine.eval_model).load_state_dict(ckpt.load(best_path)["model_state_dict"])
        t0 = time.perf_counter()
        logits, labels, idx = predict(engine, bundle.test)  # every test image once, over all ranks
        outputs = Outputs(logits, labels, idx, list(bundle.classes))
        test = {"loss": F.cross_entropy(logits, labels).item(), "accuracy": (logits.argmax(1) == labels).double().mean().item(),
                "num_samples": int(labels.numel()), "seconds": time.perf_counter() - t0}  # fmt: skip
        summary["test"] = test
        log(f"kiln: test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}, {test['num_samples']} images, "
            f"best epoch {state.best_epoch})")  # fmt: skip
        for cb in engine.callbacks:
            cb.on_eval_end("test", {"loss": test["loss"], "acc": test["accuracy"]}, outputs)
    if engine.dist.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
