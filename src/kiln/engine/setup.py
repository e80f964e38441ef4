"""Building a run from the config: seeding, the run dir check, the model/optimizer bundle, callbacks."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from kiln import data as kdata
from kiln.config import Config
from kiln.engine.callbacks import Callback, EarlyStopping, MetricsLog
from kiln.engine.distributed import Dist
from kiln.engine.ema import EMA
from kiln.engine.loggers import build_loggers
from kiln.engine.loop import Engine
from kiln.engine.precision import autocast_factory, make_scaler, resolve_precision
from kiln.errors import KilnError
from kiln.losses import build_loss
from kiln.models import transfer
from kiln.models.init import first_conv, images_for_pca, pca_init
from kiln.optim import Lookahead, build_optimizer, build_scheduler
from kiln.registry import CALLBACKS, METRICS, create_model


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
    cfg: Config,
    bundle: kdata.DataBundle,
    device: torch.device,
    callbacks: list[Callback],
    d: Dist | None = None,
) -> Engine:
    d = d or Dist()
    model = create_model(cfg.model.name, num_classes=len(bundle.classes), in_channels=bundle.in_channels,
                         image_size=bundle.image_size, pretrained=cfg.model.pretrained is True,
                         **cfg.model.args).to(device)  # fmt: skip
    t0 = time.perf_counter()
    init = getattr(model, "init_from_data", None)
    if callable(init) and not cfg.model.pretrained:  # data-dependent init (airbench's whitening conv)
        init(sample_images(bundle, 5000))
    if cfg.model.pca_init:
        conv = first_conv(model)
        pca_init(conv, sample_images(bundle, images_for_pca(conv.kernel_size, bundle.image_size)))  # type: ignore[arg-type]
    init_seconds = time.perf_counter() - t0  # training work: counted in the first epoch's time
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
    steps_per_epoch = math.ceil(len(bundle.train) / cfg.trainer.accumulate)  # per rank = global steps
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.epochs, steps_per_epoch)
    if cfg.optimizer.lookahead:
        callbacks = [*callbacks, Lookahead(model, cfg.optimizer.lookahead.k, cfg.optimizer.lookahead.alpha)]
    ema = EMA(model, cfg.trainer.ema.decay, cfg.trainer.ema.warmup) if cfg.trainer.ema else None
    # DDP, then compile, last: EMA and Lookahead hold the plain module's parameters, which both share
    train_model: torch.nn.Module = model
    if d.enabled:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.trainer.compile:
        train_model = torch.compile(train_model)
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
        skip_nan=cfg.trainer.on_nan == "skip", init_seconds=init_seconds, frozen=frozen, frozen_bn=transfer.frozen_batchnorms(model) if cfg.model.freeze_bn else [], dist=d,
    )  # fmt: skip


def sample_images(bundle: kdata.DataBundle, n: int) -> torch.Tensor:
    """Up to ``n`` normalised train images spread over the split, read without touching the loader's position."""
    idx = bundle.train.spread(n)
    xb = bundle.train.images_at(idx).to(bundle.train.device)
    return bundle.transform(xb, idx, 0, 0, train=False)


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


def build_callbacks(cfg: Config, run_dir: Path, d: Dist, extra: list[Callback] | None) -> list[Callback]:
    """kiln's own callbacks, then the config's, then ``extra``. Files are written by rank 0 only."""
    callbacks: list[Callback] = [MetricsLog(run_dir / "metrics.jsonl")] if d.is_main else []
    if cfg.trainer.early_stopping:
        es = cfg.trainer.early_stopping
        callbacks.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta))
    if d.is_main:
        callbacks += build_loggers(cfg, run_dir)
    return callbacks + user_callbacks(cfg) + (extra or [])


def write_run_info(run_dir: Path, bundle: kdata.DataBundle) -> None:
    """What it takes to reproduce the run: versions, the project's git commit, and a dataset fingerprint."""
    import json
    import platform
    import subprocess
    import sys

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()  # fmt: skip
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    timeout=10).stdout.strip())  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    info = {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": str(torch.__version__),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": commit, "git_dirty": dirty, "cwd": os.getcwd(),
        "dataset_fingerprint": bundle.fingerprint, "classes": list(bundle.classes),
    }  # fmt: skip
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))
