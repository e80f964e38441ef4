"""Defaults that follow the data: the config's ``auto`` settings decided from the sample lists (nothing
decoded yet), each said in one log line and written into the config the run saves (``config.yaml`` and
every checkpoint), so a run says how it was trained and a resume or ``kiln eval`` reads the same values.

- a train split smaller than one batch: the batch shrinks to the split (a folder of 28 photos trains);
- train classes skewed 3:1 or more (``check-data``'s threshold) with no imbalance option set: the loss weighs
  the classes balanced (``trainer.imbalance: auto``);
- ``trainer.checkpoint.monitor: auto``: ``val_map`` for multi-label data, ``val_balanced_accuracy`` for skewed
  classes (accuracy hides the small ones), else ``val_acc``.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.config import Config
from kiln.console import log
from kiln.data import DataPlan
from kiln.data.check import SKEW, skew
from kiln.errors import DataError

Say = Callable[[str], None]


def follow_the_data(cfg: Config, data: DataPlan, world: int = 1, quiet: bool = False) -> Config:
    """``cfg`` with its data-dependent ``auto`` settings decided (``quiet``: no log lines)."""
    say: Say = (lambda line: None) if quiet else log
    cfg = fitted_batch(cfg, len(data.splits.train), world, say)
    ratio = 1.0 if data.multi_label else skew(data.counts("train"))
    cfg = imbalance(cfg, ratio, say)
    return with_monitor(cfg, data.multi_label, ratio, say)


def watched_metric(cfg: Config) -> tuple[str, str]:
    """(monitor, mode) that early stopping, else checkpointing, follows, ``auto`` decided from the data (a
    search ranks its trials by it before any trial has built its run)."""
    if cfg.trainer.early_stopping:
        return cfg.trainer.early_stopping.monitor, cfg.trainer.early_stopping.mode
    if cfg.trainer.checkpoint.monitor == "auto":
        from kiln.data import plan

        cfg = follow_the_data(cfg, plan(cfg.data), quiet=True)
    return cfg.trainer.checkpoint.monitor, cfg.trainer.checkpoint.mode


def fitted_batch(cfg: Config, n_train: int, world: int, say: Say) -> Config:
    """data.batch_size shrunk to the train split when the split is smaller than one batch."""
    if n_train >= cfg.data.batch_size:
        return cfg
    batch = n_train // world * world
    if batch == 0:
        raise DataError(
            f"data: the train split has {n_train} images, fewer than the {world} processes training on it"
        )
    say(
        f"kiln: the train split has {n_train} images, fewer than data.batch_size {cfg.data.batch_size}: "
        f"batches of {batch} instead"
    )
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"batch_size": batch})})


def imbalance(cfg: Config, ratio: float, say: Say) -> Config:
    """trainer.imbalance=auto: balanced class weights for skewed classes, unless an option is set already."""
    trainer = cfg.trainer
    chosen = (
        trainer.class_weights is not None
        or cfg.data.sampler != "shuffle"
        or trainer.loss not in ("auto", "cross_entropy")  # an imbalance loss, or a user's own
    )
    if trainer.imbalance == "off" or ratio < SKEW or chosen:
        return cfg
    say(
        f"kiln: train classes are skewed {ratio:.1f}:1: the loss weighs them balanced "
        "(trainer.class_weights=balanced; trainer.imbalance=off to train as configured)"
    )
    return cfg.model_copy(update={"trainer": trainer.model_copy(update={"class_weights": "balanced"})})


def with_monitor(cfg: Config, multi_label: bool, ratio: float, say: Say) -> Config:
    """trainer.checkpoint.monitor=auto decided: val_map, val_balanced_accuracy or val_acc."""
    checkpoint = cfg.trainer.checkpoint
    if checkpoint.monitor != "auto":
        return cfg
    if multi_label:
        monitor, why = "val_map", "multi-label data"
    elif ratio >= SKEW:
        monitor, why = "val_balanced_accuracy", f"classes skewed {ratio:.1f}:1"
    else:
        monitor, why = "val_acc", ""
    if why:
        say(f"kiln: best.pt is the epoch with the best {monitor} ({why}; trainer.checkpoint.monitor)")
    chosen = checkpoint.model_copy(update={"monitor": monitor, "mode": "max"})
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"checkpoint": chosen})})
