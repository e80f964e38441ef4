"""``fit(cfg)``: build data, model and optimizer from the config, train with checkpoints, resume, report.

Reads top to bottom: set up -> (resume) -> epochs -> test on the best checkpoint -> summary.json.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import kiln
from kiln import data as kdata
from kiln.config import Config, dump_config
from kiln.engine import checkpoint as ckpt
from kiln.engine.callbacks import Callback, EarlyStopping, MetricsLog, is_better
from kiln.engine.ema import EMA
from kiln.engine.loggers import build_loggers
from kiln.engine.loop import Engine, TrainState, evaluate, predict, train_one_epoch
from kiln.engine.precision import autocast_factory, make_scaler, resolve_device, resolve_precision
from kiln.engine.progress import EpochBar, enabled, epoch_line, log
from kiln.errors import CheckpointError, KilnError
from kiln.evaluation.metrics import Outputs
from kiln.losses import build_loss
from kiln.models import transfer
from kiln.optim import Lookahead, add_param_group, build_optimizer, build_scheduler
from kiln.registry import CALLBACKS, METRICS, create_model, import_user_modules


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def check_writable(run_dir: Path) -> None:
    """Fail before training, not at the first checkpoint, when the run dir cannot be written."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise KilnError(
            f"run.dir: cannot write to {run_dir} ({e.strerror}); choose another run.dir"
        ) from None


def build_engine(
    cfg: Config, bundle: kdata.DataBundle, device: torch.device, callbacks: list[Callback]
) -> Engine:
    model = create_model(cfg.model.name, num_classes=len(bundle.classes), in_channels=bundle.in_channels,
                         image_size=bundle.image_size, pretrained=cfg.model.pretrained is True,
                         **cfg.model.args).to(device)  # fmt: skip
    init = getattr(model, "init_from_data", None)
    if callable(init) and not cfg.model.pretrained:  # data-dependent init (airbench's whitening conv)
        init(sample_images(bundle, 5000))
    frozen = transfer.prepare(model, cfg.model.pretrained, cfg.model.strict, cfg.model.freeze)
    channels_last = cfg.trainer.channels_last == "on" or (
        cfg.trainer.channels_last == "auto" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        and (device.type == "cuda" or (device.type == "cpu" and not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())))
    )  # fmt: skip
    # CPU: LeNet trains at ~18,000 vs ~14,500 images/s at batch 256 in channels_last; but with BatchNorm,
    # torch 2.14's CPU channels_last kernels corrupted memory in our tests (resnet_small, 8 channels), so
    # `auto` leaves conv nets with BatchNorm in the default layout there.
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(cfg.trainer.precision, device)
    optimizer = build_optimizer(
        cfg.optimizer, model, cfg.data.batch_size, fused=device.type in ("cuda", "cpu")
    )
    steps_per_epoch = math.ceil(len(bundle.train) / cfg.trainer.accumulate)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.epochs, steps_per_epoch)
    if cfg.optimizer.lookahead:
        callbacks = [*callbacks, Lookahead(model, cfg.optimizer.lookahead.k, cfg.optimizer.lookahead.alpha)]
    ema = EMA(model, cfg.trainer.ema.decay, cfg.trainer.ema.warmup) if cfg.trainer.ema else None
    # compile last: EMA and Lookahead hold the plain module's parameters, which the compiled one shares
    train_model = torch.compile(model) if cfg.trainer.compile else model
    return Engine(
        model=train_model, optimizer=optimizer, scheduler=scheduler, scaler=make_scaler(precision, device),
        autocast=autocast_factory(precision, device), transform=bundle.transform, device=device,
        label_smoothing=cfg.trainer.label_smoothing, grad_clip=cfg.trainer.grad_clip,
        accumulate=cfg.trainer.accumulate, log_every=cfg.trainer.log_every_n_steps,
        channels_last=channels_last, callbacks=callbacks, ema=ema, tta=cfg.trainer.tta,
        mixup=cfg.data.augment.mixup,
        step_scheduler=cfg.scheduler.name != "none" or cfg.scheduler.warmup_epochs > 0,
        loss_fn=None if cfg.trainer.loss == "cross_entropy" and not cfg.trainer.loss_args
        else build_loss(cfg.trainer.loss, cfg.trainer.label_smoothing, cfg.trainer.loss_args),
        metric_fns={name.rpartition(":")[2]: METRICS.get(name) for name in cfg.trainer.metrics},
        frozen=frozen, frozen_bn=transfer.frozen_batchnorms(model) if cfg.model.freeze_bn else [],
    )  # fmt: skip


def sample_images(bundle: kdata.DataBundle, n: int) -> torch.Tensor:
    """Up to ``n`` normalised train images, read without touching the loader's position."""
    from kiln.data.loaders import MemoryLoader

    t = bundle.train
    if isinstance(t, MemoryLoader):
        xb = t.images[:n].to(t.device)
    else:
        ds = t.loader.dataset
        xb = torch.stack([torch.as_tensor(ds[i][0]) for i in range(min(n, len(ds)))]).to(t.device)
    return bundle.transform(xb, torch.arange(len(xb)), 0, 0, train=False)


def unfreeze(cfg: Config, engine: Engine) -> None:
    """Gradual unfreezing: the frozen parameters join the optimizer as a new group (lr x lr_mult)."""
    names = set(engine.frozen)
    params = [
        p for n, p in ckpt.unwrap(engine.model).named_parameters() if n in names and not p.requires_grad
    ]
    if not params or cfg.trainer.unfreeze is None:
        return
    for p in params:
        p.requires_grad_(True)
    engine.frozen_bn = []
    add_param_group(engine.optimizer, engine.scheduler, params, cfg.trainer.unfreeze.lr_mult,
                    cfg.optimizer.weight_decay)  # fmt: skip
    log(f"kiln: unfroze {len(params)} parameter tensors at epoch {cfg.trainer.unfreeze.at_epoch} "
        f"(lr x {cfg.trainer.unfreeze.lr_mult})")  # fmt: skip


def make_checkpoint(cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle,
                    metrics: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "model_state_dict": ckpt.unwrap(engine.eval_model).state_dict(),  # EMA weights when EMA is on
        "train_state_dict": ckpt.unwrap(engine.model).state_dict() if engine.ema is not None else None,
        "ema_state_dict": engine.ema.state_dict() if engine.ema is not None else None,
        "optimizer_state_dict": engine.optimizer.state_dict(),
        "scheduler_state_dict": engine.scheduler.state_dict(),
        "scaler_state_dict": engine.scaler.state_dict(),
        "epoch": state.epoch, "step": state.step, "loss": state.last_loss,
        "best_metric": state.best_metric, "best_epoch": state.best_epoch,
        "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(engine.callbacks)},
        "rng": ckpt.rng_state(), "data_state": bundle.train.state_dict(),
        "config": cfg.to_dict(), "classes": list(bundle.classes), "preprocess": bundle.preprocess(),
        "metrics": metrics, "kiln_version": kiln.__version__, "torch_version": str(torch.__version__),
    }  # fmt: skip


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout (e.g. channels_last) of its parameter: fused kernels
    assume they match, and a checkpoint stores contiguous tensors (mismatch = wrong results or a crash)."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def restore(path: str, cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle) -> None:
    saved = ckpt.load(path)
    if cfg.trainer.unfreeze and saved.get("epoch", 0) >= cfg.trainer.unfreeze.at_epoch:
        unfreeze(cfg, engine)  # the checkpoint's optimizer already has the unfrozen group
    if saved.get("classes") != list(bundle.classes):
        raise CheckpointError(f"{path}: trained on classes {saved.get('classes')}, but the data now has "
                              f"{list(bundle.classes)}; resume with the same data")  # fmt: skip
    old_model = saved.get("config", {}).get("model")
    if old_model != cfg.to_dict()["model"]:
        raise CheckpointError(f"{path}: the model differs (checkpoint: {old_model}, config: "
                              f"{cfg.to_dict()['model']}); resume with the checkpoint's model settings")  # fmt: skip
    ckpt.load_weights(
        ckpt.unwrap(engine.model), saved.get("train_state_dict") or saved["model_state_dict"], path
    )
    try:
        engine.optimizer.load_state_dict(saved["optimizer_state_dict"])
        match_param_layout(engine.optimizer)
        if engine.ema is not None and saved.get("ema_state_dict"):
            engine.ema.load_state_dict(saved["ema_state_dict"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path}: does not fit this model/optimizer: {str(e).splitlines()[0]}"
        ) from None
    engine.scheduler.load_state_dict(saved["scheduler_state_dict"])
    engine.scaler.load_state_dict(saved["scaler_state_dict"])
    state.epoch, state.step, state.last_loss = saved["epoch"], saved["step"], saved.get("loss")
    state.best_metric, state.best_epoch = saved.get("best_metric"), saved.get("best_epoch")
    states = saved.get("callbacks", {})
    for i, cb in enumerate(engine.callbacks):
        if f"{i}:{type(cb).__name__}" in states:  # same position, same class: its own saved state
            cb.load_state_dict(states[f"{i}:{type(cb).__name__}"])
    bundle.train.load_state_dict(saved["data_state"])
    ckpt.set_rng_state(saved["rng"])  # last: nothing after this may draw random numbers before training


def save_epoch_checkpoints(cfg: Config, run_dir: Path, payload: dict[str, Any], improved: bool) -> None:
    cdir = run_dir / "checkpoints"
    if improved:
        ckpt.save(payload, cdir / "best.pt")
    ckpt.save(payload, cdir / "last.pt")
    every, epoch = cfg.trainer.checkpoint.every_n_epochs, payload["epoch"]
    if every and epoch % every == 0:
        ckpt.save(payload, cdir / f"epoch-{epoch}.pt")
        kept = sorted(cdir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for old in kept[: -cfg.trainer.checkpoint.keep]:
            old.unlink(missing_ok=True)


def user_callbacks(cfg: Config) -> list[Callback]:
    out = []
    for spec in cfg.callbacks:
        try:
            cb = CALLBACKS.get(spec.name)(**spec.args)
        except TypeError as e:
            raise KilnError(f"callbacks: {spec.name} does not accept args {spec.args} ({e})") from None
        if not isinstance(cb, Callback):
            raise KilnError(
                f"callbacks: {spec.name} made a {type(cb).__name__}, not a kiln.Callback subclass"
            )
        out.append(cb)
    return out


def fit(
    cfg: Config, resume: str | None = None, extra_callbacks: list[Callback] | None = None
) -> dict[str, Any]:
    import_user_modules(cfg.imports)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = resolve_device(cfg.run.device)
    run_dir = cfg.run_dir
    check_writable(run_dir)

    bundle = kdata.build(cfg.data, cfg.run.seed, device)
    callbacks: list[Callback] = [MetricsLog(run_dir / "metrics.jsonl")]
    if cfg.trainer.early_stopping:
        es = cfg.trainer.early_stopping
        callbacks.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta))
    callbacks += build_loggers(cfg, run_dir)
    callbacks += user_callbacks(cfg)
    callbacks += extra_callbacks or []
    engine = build_engine(cfg, bundle, device, callbacks)
    state = TrainState()
    if resume:
        restore(resume, cfg, engine, state, bundle)
    dump_config(cfg, run_dir / "config.yaml")
    mon = cfg.trainer.checkpoint
    epochs = math.ceil(cfg.trainer.epochs)
    # the batches of the last epoch: all of them, or its fraction when trainer.epochs is fractional
    last_batches = math.ceil((cfg.trainer.epochs - (epochs - 1)) * len(bundle.train))
    log(f"kiln: training {cfg.model.name} on {cfg.data.source} ({len(bundle.classes)} classes, "
        f"{len(bundle.train.order.indices())} train images) on {device}, {epochs} epochs -> {run_dir}")  # fmt: skip
    info = {"start_epoch": state.epoch, "run_dir": str(run_dir), "config": cfg.to_dict(), "classes": bundle.classes,
            "model": ckpt.unwrap(engine.model), "sample_images": sample_images(bundle, 16),  # normalised
            "augment": lambda x, idx: bundle.transform(x, idx, 0, 0, train=True), "bundle": bundle}  # fmt: skip
    for cb in callbacks:
        cb.on_fit_start(info)

    stop_reason = None
    show_bar = enabled(cfg.trainer.progress)
    for epoch in range(state.epoch, epochs):
        bundle.train.set_epoch(epoch)
        if cfg.trainer.unfreeze and epoch + 1 == cfg.trainer.unfreeze.at_epoch:
            unfreeze(cfg, engine)
        for cb in callbacks:
            cb.on_epoch_start(epoch)
        t0 = time.perf_counter()
        bar = (
            EpochBar(epoch + 1, epochs, len(bundle.train), bundle.train.state_dict()["position"])
            if show_bar
            else None
        )
        try:
            limit = last_batches if epoch + 1 == epochs else None
            train_m = train_one_epoch(engine, bundle.train, state, bar, limit)
        finally:
            if bar is not None:
                bar.close()
        val = evaluate(engine, bundle.val) if bundle.val is not None else {"loss": math.nan, "acc": math.nan}
        state.epoch = epoch + 1
        metrics = {"epoch": epoch + 1, "step": state.step, **train_m, "val_loss": val["loss"],
                   "val_acc": val["acc"], **{f"val_{k[7:]}": v for k, v in val.items() if k.startswith("metric_")},
                   "lr": engine.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}  # fmt: skip
        for cb in callbacks:
            cb.on_eval_end("val", {"loss": val["loss"], "acc": val["acc"]})
        if mon.monitor not in metrics:
            raise KilnError(f"trainer.checkpoint.monitor: '{mon.monitor}' is not a metric "
                            f"(metrics: {', '.join(sorted(metrics))})")  # fmt: skip
        value = metrics[mon.monitor]
        improved = math.isnan(value) or is_better(value, state.best_metric, mon.mode)
        if improved:
            state.best_metric, state.best_epoch = value, epoch + 1
        for cb in callbacks:
            stop_reason = cb.on_epoch_end(epoch + 1, metrics) or stop_reason
        save_epoch_checkpoints(cfg, run_dir, make_checkpoint(cfg, engine, state, bundle, metrics), improved)
        log(epoch_line(metrics, epochs))
        if stop_reason:
            log(f"kiln: {stop_reason}")
            break

    summary = finish(cfg, engine, state, bundle, run_dir, stop_reason)
    for cb in callbacks:
        cb.on_fit_end(summary)
    return summary


def finish(cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle, run_dir: Path,
           stop_reason: str | None) -> dict[str, Any]:  # fmt: skip
    """Measure the test split on the *best* checkpoint (read back from disk) and write summary.json."""
    summary: dict[str, Any] = {
        "best_epoch": state.best_epoch, "best_metric": state.best_metric,
        "monitor": cfg.trainer.checkpoint.monitor, "epochs_run": state.epoch, "steps": state.step,
        "stopped_early": stop_reason, "classes": list(bundle.classes),
        "best_checkpoint": str(run_dir / "checkpoints" / "best.pt"),
    }  # fmt: skip
    best_path = run_dir / "checkpoints" / "best.pt"
    if bundle.test is not None and best_path.exists():
        ckpt.unwrap(engine.eval_model).load_state_dict(ckpt.load(best_path)["model_state_dict"])
        logits, labels, idx = predict(engine, bundle.test)
        outputs = Outputs(logits, labels, idx, list(bundle.classes))
        test = {"loss": F.cross_entropy(logits, labels).item(), "accuracy": (logits.argmax(1) == labels).float().mean().item(),
                "num_samples": int(labels.numel())}  # fmt: skip
        summary["test"] = test
        log(f"kiln: test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}, {test['num_samples']} images, "
            f"best epoch {state.best_epoch})")  # fmt: skip
        for cb in engine.callbacks:
            cb.on_eval_end("test", {"loss": test["loss"], "acc": test["accuracy"]}, outputs)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
