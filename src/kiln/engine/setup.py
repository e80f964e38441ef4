"""Building a ``Run`` from the config, cheapest checks first: the names the config uses, the data's sample
lists and spec, the model with its pretrained weights, frozen parts and optimizer groups, the loss and the
callbacks are all checked before a single image is decoded; then the data-dependent work (mean/std, the
first layer's PCA, the head's start, a frozen backbone's features), the schedule, EMA, DDP and compile."""

from __future__ import annotations

import math
import os
import random
import time

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kiln.config import Config
from kiln.console import bar_enabled, log
from kiln.data import DataPlan, Preset, load_train, plan
from kiln.data.augment import photo_pipeline
from kiln.engine import head_solver
from kiln.engine.callbacks import Callback, CallbackList, EarlyStopping, MetricsLog
from kiln.engine.checkpointing import Checkpoints
from kiln.engine.checks import MetricFn, check_config, check_with_data
from kiln.engine.criterion import build_criterion
from kiln.engine.distributed import Dist
from kiln.engine.ema import EMA
from kiln.engine.evaluate import Autocast, EvalOptions
from kiln.engine.feature_plan import FeaturePlan, frozen_twin, plan_features
from kiln.engine.feeds import CachedFeatures, LiveImages, make_feed
from kiln.engine.init import HeadStart, data_init, start_head
from kiln.engine.loggers import build_loggers
from kiln.engine.lookahead import Lookahead
from kiln.engine.loop import StepOptions
from kiln.engine.precision import autocast_factory, make_scaler, resolve_precision
from kiln.engine.progress import ProgressBar
from kiln.engine.recipe import follow_the_data
from kiln.engine.run import Epochs, Run, Unfreezing
from kiln.errors import KilnError
from kiln.models import build as build_network
from kiln.models import transfer
from kiln.models.preprocessing import weights_preprocessing
from kiln.optim import build_optimizer, build_scheduler
from kiln.paths import RunDir
from kiln.registry import CALLBACKS


def data_preset(cfg: Config) -> Preset | None:
    """The pretrained weights' preprocessing (None from scratch), said in the log with where it came from."""
    found = weights_preprocessing(cfg.model)
    if found is None:
        return None
    preset = Preset(**found)
    given = [
        k for k in ("image_size", "crop_pct", "interpolation", "mean") if getattr(cfg.data, k) is not None
    ]
    shown = ", ".join(f"{k} {v}" for k, v in found.items() if k != "source")
    wins = f" (the config's data.{', data.'.join(given)} win)" if given else ""
    log(f"kiln: preprocessing from {preset.source}: {shown}{wins}")
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


def use_channels_last(setting: str, model: nn.Module, device: torch.device) -> bool:
    # CPU: LeNet trains at ~18,000 vs ~14,500 images/s at batch 256 in channels_last; but with BatchNorm,
    # torch 2.14's CPU channels_last kernels corrupted memory in our tests (resnet_small, 8 channels), so
    # `auto` leaves conv nets with BatchNorm in the default layout there.
    if setting != "auto":
        return setting == "on"
    convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return convs and (device.type == "cuda" or (device.type == "cpu" and not bn))


def build_model(
    cfg: Config, data: DataPlan, device: torch.device
) -> tuple[nn.Module, list[str], transfer.Head | None]:
    """The model on ``device``, its pretrained weights loaded and parameters frozen (no data needed yet).
    Returns (model, frozen parameter names, the pretrained classifier for model.head_init)."""
    model, head = build_network(
        cfg.model.name,
        num_classes=len(data.classes),
        in_channels=data.spec.channels,
        image_size=data.spec.size,
        pretrained=cfg.model.pretrained is True,
        **cfg.model.args,
    )
    frozen, file_head = transfer.prepare(
        model.to(device), cfg.model.pretrained, cfg.model.strict, cfg.model.freeze
    )
    return model, frozen, file_head or head


def frozen_batchnorms(cfg: Config, model: nn.Module) -> list[nn.Module]:

    if cfg.model.bn_stats == "frozen":
        return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return transfer.frozen_batchnorms(model) if cfg.model.freeze_bn else []


def with_feature_views(cfg: Config, features: FeaturePlan) -> Config:
    """With a frozen backbone and random photo augmentation, a bounded set of views (data.augment.views)
    drawn once: written into the config, so config.yaml and the checkpoint say how the run was fed."""
    aug = cfg.data.augment
    if aug.views or not features.random or not features.applies:
        return cfg
    data_cfg = cfg.data.model_copy(update={"augment": aug.model_copy(update={"views": features.views})})
    return cfg.model_copy(update={"data": data_cfg})


def build_run(cfg: Config, dist: Dist, device: torch.device, extra: list[Callback]) -> Run:
    trainer = cfg.trainer
    check_config(cfg)  # names, metrics and monitors: before anything is read
    if cfg.data.batch_size % dist.world:
        raise KilnError(
            f"data.batch_size: {cfg.data.batch_size} (the global batch) does not split evenly over "
            f"{dist.world} processes; use a multiple of {dist.world}"
        )
    preset = data_preset(cfg)
    data_plan = plan(cfg.data, preset)
    check_with_data(cfg, data_plan.multi_label)
    cfg = follow_the_data(cfg, data_plan, dist.world)  # batch, imbalance, monitor: from the sample lists
    trainer = cfg.trainer
    metric_fns = check_config(cfg)  # the monitor the data chose is computed too
    model, frozen, old_head = build_model(cfg, data_plan, device)
    channels_last = use_channels_last(trainer.channels_last, model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(trainer.precision, device)
    step, evaluation = step_options(cfg, channels_last, autocast_factory(precision, device), metric_fns)
    optimizer = build_optimizer(
        cfg.optimizer, model, cfg.data.batch_size, fused=device.type in ("cuda", "cpu")
    )
    criterion = build_criterion(cfg, data_plan)
    callbacks = build_callbacks(cfg, RunDir(cfg.run_dir), model, dist, data_plan.split("val") is not None)
    photo = photo_pipeline(cfg.data.augment, data_plan.spec)
    feature_plan = plan_features(cfg, photo)
    cfg = with_feature_views(cfg, feature_plan)
    # the expensive part: nothing above read an image
    data = load_train(data_plan, cfg.data, cfg.run.seed, device, dist.rank, dist.world, preset)
    init_seconds = data_init(cfg, model, data)
    train_model = wrapped(model, cfg, dist, device)
    live = LiveImages(train_model, data, step, evaluation, frozen_batchnorms(cfg, model))
    feed = make_feed(live, model, data, feature_plan, precision, dist, old_head)
    t0 = time.perf_counter()
    checkpoint = cfg.trainer.checkpoint
    judge = head_solver.judge_for(checkpoint.monitor, checkpoint.mode, metric_fns)
    twin = frozen_twin(cfg, photo)

    def twin_features() -> CachedFeatures | None:
        return (
            make_feed(live, model, data, twin, precision, dist, old_head, quiet=True)
            if twin.applies
            else None
        )

    start = HeadStart(
        bool(cfg.model.pretrained), feature_plan.solve, criterion, judge, cfg.run.seed, device, twin_features
    )
    started = start_head(cfg.model.head_init, model, data, feed, step, old_head, start)
    init_seconds += time.perf_counter() - t0  # data-dependent, like pca_init: training work
    ema = EMA(model, trainer.ema.decay, trainer.ema.warmup) if trainer.ema else None
    steps_per_epoch = math.ceil(len(data.train) / trainer.accumulate)  # per rank = global
    scheduler = build_scheduler(cfg.scheduler, optimizer, trainer.epochs, steps_per_epoch)
    return Run(
        cfg=cfg,
        dir=RunDir(cfg.run_dir),
        dist=dist,
        device=device,
        data=data,
        model=model,
        train_model=train_model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule_steps=cfg.scheduler.name != "none" or cfg.scheduler.warmup_epochs > 0,
        steps_per_epoch=steps_per_epoch,
        scaler=make_scaler(precision, device),
        ema=ema,
        step=step,
        evaluation=evaluation,
        epochs=Epochs(trainer.epochs, trainer.val_every_n_epochs),
        frozen=frozen,
        unfreezing=Unfreezing.of(cfg),
        features=feature_plan,
        feed=feed,
        callbacks=CallbackList([*callbacks, *extra]),
        checkpoints=Checkpoints(RunDir(cfg.run_dir), trainer.checkpoint, dist.is_main),
        init_seconds=init_seconds,
        start=started,
        wrap=lambda plain: wrapped(plain, cfg, dist, device),
    )


def step_options(
    cfg: Config, channels_last: bool, autocast: Autocast, metric_fns: dict[str, MetricFn]
) -> tuple[StepOptions, EvalOptions]:
    """How a training step and an evaluation run (from cfg.trainer)."""
    trainer = cfg.trainer
    skip_nan = trainer.on_nan == "skip"
    step = StepOptions(
        trainer.accumulate, trainer.grad_clip, trainer.log_every_n_steps, skip_nan, channels_last, autocast
    )
    return step, EvalOptions(trainer.tta, channels_last, autocast, metric_fns)


def wrapped(model: nn.Module, cfg: Config, dist: Dist, device: torch.device) -> nn.Module:
    """What the step calls: DDP, then torch.compile, last (EMA and Lookahead hold the plain module's
    parameters, which both share)."""
    train_model: nn.Module = model
    if dist.enabled:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.trainer.compile:
        train_model = torch.compile(train_model)
    return train_model


def user_callbacks(cfg: Config) -> list[Callback]:
    out = []
    for spec in cfg.callbacks:
        try:
            cb = CALLBACKS.get(spec.name)(**spec.args)
        except TypeError as e:
            raise KilnError(
                f"callbacks: {spec.name} does not accept args {str(spec.args)[:200]} ({e})"
            ) from None
        if not isinstance(cb, Callback):
            raise KilnError(
                f"callbacks: {spec.name} made a {type(cb).__name__}, not a kiln.Callback subclass"
            )
        out.append(cb)
    return out


def build_callbacks(cfg: Config, run: RunDir, model: nn.Module, dist: Dist, has_val: bool) -> list[Callback]:
    """kiln's own callbacks (files, console and loggers on rank 0 only), then the config's."""
    trainer = cfg.trainer
    callbacks: list[Callback] = []
    if dist.is_main:
        bar = bar_enabled(trainer.progress)
        callbacks += [
            MetricsLog(run.metrics),
            ProgressBar(math.ceil(trainer.epochs), bar, has_val, cfg.data.batch_size),
        ]
    if trainer.early_stopping:
        stopping = trainer.early_stopping
        callbacks.append(
            EarlyStopping(stopping.monitor, stopping.mode, stopping.patience, stopping.min_delta)
        )
    if cfg.optimizer.lookahead:
        callbacks.append(Lookahead(model, cfg.optimizer.lookahead.k, cfg.optimizer.lookahead.alpha))
    if dist.is_main:
        callbacks += build_loggers(cfg, run)
    return callbacks + user_callbacks(cfg)
