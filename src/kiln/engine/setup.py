"""Building a run from the config: seeding, the model with its optimizer, schedule and wrappers (``Parts``),
the callbacks, and run_info.json."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kiln.atomic import write_atomic
from kiln.config import Config
from kiln.console import bar_enabled, log
from kiln.data import DataBundle, Preset
from kiln.engine.callbacks import Callback, EarlyStopping, MetricsLog
from kiln.engine.distributed import Dist
from kiln.engine.ema import EMA
from kiln.engine.features import FrozenFeatures, frozen_features
from kiln.engine.loggers import build_loggers
from kiln.engine.lookahead import Lookahead
from kiln.engine.loop import Criterion, EvalOptions, StepOptions
from kiln.engine.precision import autocast_factory, make_scaler, resolve_precision
from kiln.engine.progress import ProgressBar
from kiln.errors import KilnError
from kiln.losses import build_loss
from kiln.models import create_model, transfer
from kiln.models.init import first_conv, images_for_pca, pca_init
from kiln.models.preprocessing import weights_preprocessing
from kiln.optim import build_optimizer, build_scheduler
from kiln.paths import RunDir
from kiln.registry import CALLBACKS, METRICS


@dataclass(frozen=True)
class Parts:
    """Everything built once from the config that a training step uses; nothing here is replaced later."""

    model: nn.Module  # the plain module: weights, checkpoints, EMA and Lookahead hold its parameters
    train_model: nn.Module  # what the step calls: ``model`` under DDP and/or torch.compile
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule_steps: bool  # False for a constant LR: no Python-heavy scheduler call per step
    scaler: torch.amp.GradScaler
    ema: EMA | None
    step: StepOptions
    eval: EvalOptions
    frozen: list[str]  # parameter names frozen by model.freeze (trainer.unfreeze brings them back)
    freeze_bn: bool  # BatchNorm layers whose parameters are all frozen stay in eval mode
    bn_stats_frozen: bool  # every BatchNorm layer stays in eval mode (model.bn_stats: frozen)
    init_seconds: float  # spent on a data-dependent init: training work, counted in the first epoch
    features: FrozenFeatures | None  # a frozen backbone computed once (trainer.frozen_features)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.train_model

    def frozen_batchnorms(self) -> list[nn.Module]:
        if self.bn_stats_frozen:
            return [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return transfer.frozen_batchnorms(self.model) if self.freeze_bn else []


def data_preset(cfg: Config) -> Preset | None:
    """The pretrained weights' preprocessing (None from scratch), said in the log with where it came from."""
    w = weights_preprocessing(cfg.model)
    if w is None:
        return None
    preset = Preset(**w)
    given = [
        k for k in ("image_size", "crop_pct", "interpolation", "mean") if getattr(cfg.data, k) is not None
    ]
    shown = ", ".join(f"{k} {v}" for k, v in w.items() if k != "source")
    log(
        f"kiln: preprocessing from {preset.source}: {shown}"
        + (f" (the config's data.{', data.'.join(given)} win)" if given else "")
    )
    return preset


def seed_everything(seed: int, deterministic: bool, threads: int | None = None) -> None:
    if threads:  # the number of threads changes how CPU kernels sum floats: fixed, a run repeats bit for bit
        torch.set_num_threads(threads)
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


def build_model(cfg: Config, data: DataBundle, device: torch.device) -> tuple[nn.Module, list[str], float]:
    """The model on ``device``: created, initialised from the data when asked, pretrained weights loaded
    and parameters frozen. Returns (model, frozen parameter names, seconds spent on the data init)."""
    model = create_model(
        cfg.model.name,
        num_classes=len(data.classes),
        in_channels=data.in_channels,
        image_size=data.image_size,
        pretrained=cfg.model.pretrained is True,
        **cfg.model.args,
    ).to(device)
    t0 = time.perf_counter()
    init = getattr(model, "init_from_data", None)
    if callable(init) and not cfg.model.pretrained:  # data-dependent init (airbench's whitening conv)
        init(sample_images(data, 5000))
    if cfg.model.pca_init:
        conv = first_conv(model)
        pca_init(conv, sample_images(data, images_for_pca(conv.kernel_size, data.image_size)))  # type: ignore[arg-type]
    init_seconds = time.perf_counter() - t0
    frozen = transfer.prepare(model, cfg.model.pretrained, cfg.model.strict, cfg.model.freeze)
    return model, frozen, init_seconds


def use_channels_last(setting: str, model: nn.Module, device: torch.device) -> bool:
    # CPU: LeNet trains at ~18,000 vs ~14,500 images/s at batch 256 in channels_last; but with BatchNorm,
    # torch 2.14's CPU channels_last kernels corrupted memory in our tests (resnet_small, 8 channels), so
    # `auto` leaves conv nets with BatchNorm in the default layout there.
    if setting != "auto":
        return setting == "on"
    convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return convs and (device.type == "cuda" or (device.type == "cpu" and not bn))


def build_parts(cfg: Config, data: DataBundle, device: torch.device, d: Dist) -> Parts:
    model, frozen, init_seconds = build_model(cfg, data, device)
    t = cfg.trainer
    channels_last = use_channels_last(t.channels_last, model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(t.precision, device)
    autocast = autocast_factory(precision, device)
    step = StepOptions(
        t.accumulate, t.grad_clip, t.log_every_n_steps, t.on_nan == "skip", channels_last, autocast
    )
    evaluation = EvalOptions(
        t.tta, channels_last, autocast, {n.rpartition(":")[2]: METRICS.get(n) for n in t.metrics}
    )
    features = frozen_features(cfg, model, data, step, evaluation, d)
    if cfg.model.head_init == "pretrained_classes":  # data-dependent, like pca_init: counted as training time
        t0 = time.perf_counter()
        init_head(model, data, features, step)
        init_seconds += time.perf_counter() - t0
    model.__dict__.pop("kiln_pretrained_head", None)  # used or not, not carried into EMA's copy and the run
    optimizer = build_optimizer(
        cfg.optimizer, model, cfg.data.batch_size, fused=device.type in ("cuda", "cpu")
    )
    steps_per_epoch = math.ceil(len(data.train) / t.accumulate)  # type: ignore[arg-type]  # per rank = global
    scheduler = build_scheduler(cfg.scheduler, optimizer, t.epochs, steps_per_epoch)
    ema = EMA(model, t.ema.decay, t.ema.warmup) if t.ema else None
    # DDP, then compile, last: EMA and Lookahead hold the plain module's parameters, which both share
    train_model: nn.Module = model
    if d.enabled:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)
    return Parts(
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scaler=make_scaler(precision, device),
        ema=ema,
        scheduler=scheduler,
        schedule_steps=cfg.scheduler.name != "none" or cfg.scheduler.warmup_epochs > 0,
        criterion=build_loss(t.loss, t.label_smoothing, t.loss_args),
        step=step,
        eval=evaluation,
        frozen=frozen,
        freeze_bn=cfg.model.freeze_bn,
        bn_stats_frozen=cfg.model.bn_stats == "frozen",
        init_seconds=init_seconds,
        features=features,
    )


@torch.no_grad()
def init_head(model: nn.Module, data: DataBundle, features: FrozenFeatures | None, step: StepOptions) -> None:
    """model.head_init: pretrained_classes, from the train images' features (the frozen backbone's cache
    when there is one, else up to 2,000 train images in the evaluation's view)."""
    old = getattr(model, "kiln_pretrained_head", None)
    if old is None:
        raise KilnError(
            "model.head_init=pretrained_classes: the pretrained weights have no classifier to start "
            "from (the weights file has no head of its own); use model.head_init=random"
        )
    if features is not None:
        feats, labels = features.train_features()
    else:
        idx = data.train.spread(2000)  # type: ignore[union-attr]
        x, labels = sample_images(data, 2000), data.train.labels[idx]  # type: ignore[union-attr]
        with transfer.without_head(model) as backbone, step.autocast():
            feats = torch.cat([backbone(x[i : i + 64]).float() for i in range(0, len(x), 64)])
    head = model.get_submodule(transfer.head_name(model))
    missing = transfer.init_head_from_classes(head, old, feats, labels)  # type: ignore[arg-type]
    log(
        f"kiln: head starts from the pretrained classifier, mixed per class by its predictions on {len(labels)} "
        f"train images" + (f" (classes {missing} have no images: random rows)" if missing else "")
    )


def sample_images(data: DataBundle, n: int) -> torch.Tensor:
    """Up to ``n`` normalised train images spread over the split, read without moving the loader."""
    idx = data.train.spread(n)  # type: ignore[union-attr]
    return data.transform.train_centre(data.train.images_at(idx).to(data.train.device), idx)  # type: ignore[union-attr]


def augmented_samples(data: DataBundle, n: int) -> Callable[[], torch.Tensor]:
    """A function giving ``n`` training images spread over the classes after the training augmentation, on
    the 0..1 scale for display (epoch 0, step 0: drawn from its own seeded generator, not the global RNGs)."""

    def make() -> torch.Tensor:
        train = data.train
        idx = train.spread(n)  # type: ignore[union-attr]
        x = train.images_at(idx).to(train.device)  # type: ignore[union-attr]
        out = data.transform.augmented(x, idx.to(x.device), 0, 0)
        return data.transform.denormalize(out) if x.dtype == torch.uint8 else out  # float data: as it came

    return make


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


def build_callbacks(cfg: Config, run: RunDir, parts: Parts, data: DataBundle, d: Dist) -> list[Callback]:
    """kiln's own callbacks (files, console and loggers on rank 0 only), then the config's."""
    t = cfg.trainer
    callbacks: list[Callback] = []
    if d.is_main:
        callbacks += [
            MetricsLog(run.metrics),
            ProgressBar(math.ceil(t.epochs), bar_enabled(t.progress), data.val is not None),
        ]
    if t.early_stopping:
        es = t.early_stopping
        callbacks.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta))
    if cfg.optimizer.lookahead:
        callbacks.append(Lookahead(parts.model, cfg.optimizer.lookahead.k, cfg.optimizer.lookahead.alpha))
    if d.is_main:
        callbacks += build_loggers(cfg, run)
    return callbacks + user_callbacks(cfg)


def write_run_info(run: RunDir, data: DataBundle) -> None:
    """What it takes to reproduce the run: versions, the project's git commit, and a dataset fingerprint."""
    commit = dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": commit,
        "git_dirty": dirty,
        "cwd": os.getcwd(),
        "dataset_fingerprint": data.fingerprint,
        "classes": list(data.classes),
    }
    write_atomic(run.run_info, json.dumps(info, indent=2))
