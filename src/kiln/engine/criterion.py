"""The training loss from the config: trainer.loss (auto: cross-entropy, or BCE for multi-label data),
trainer.class_weights, and the train class counts for the losses that need them (imbalance)."""

from __future__ import annotations

import inspect

from kiln.config import Config
from kiln.data import DataPlan
from kiln.engine.loop import Criterion
from kiln.errors import ConfigError
from kiln.losses import build_loss
from kiln.registry import LOSSES


def build_criterion(cfg: Config, data: DataPlan) -> Criterion:
    """The training loss: trainer.loss (auto: cross-entropy, or BCE for multi-label data), with
    trainer.class_weights, and the train class counts for the losses that need them (imbalance)."""
    trainer = cfg.trainer
    name = trainer.loss if trainer.loss != "auto" else ("bce" if data.multi_label else "cross_entropy")
    args = dict(trainer.loss_args)
    if name in ("cross_entropy", "focal", "weighted_cross_entropy", "ldam") and data.multi_label:
        raise ConfigError(
            f"trainer.loss: {name} takes one class per image, but the data is multi-label; use "
            "bce or asymmetric (trainer.loss=auto picks bce)"
        )
    if name in ("bce", "asymmetric") and not data.multi_label:
        raise ConfigError(
            f"trainer.loss: {name} is for multi-label data (several labels per image); this data "
            "has one class per image: use cross_entropy or trainer.loss=auto"
        )
    if trainer.class_weights is not None:
        if name == "cross_entropy":
            name, args["class_weights"] = "weighted_cross_entropy", trainer.class_weights
        elif name == "bce":
            args["pos_weight"] = bce_weights(trainer.class_weights, data)
        else:
            raise ConfigError(
                f"trainer.class_weights: applies to cross_entropy and bce, not {name} (for it, give "
                "the weights in trainer.loss_args if it takes them)"
            )
    takes_counts = (
        "class_counts" in inspect.signature(LOSSES.get(name)).parameters if ":" not in name else False
    )
    return build_loss(name, trainer.label_smoothing, args, data.counts("train") if takes_counts else None)


def bce_weights(weights: str | list[float], data: DataPlan) -> list[float]:
    """BCE's pos_weight per class: the given ones, or balanced = negatives / positives of each class."""
    if not isinstance(weights, str):
        if len(weights) != len(data.classes):
            raise ConfigError(
                f"trainer.class_weights: {len(weights)} weights for {len(data.classes)} classes"
            )
        return list(weights)
    total, counts = len(data.splits.train), data.counts("train")
    if not all(counts):
        empty = [c for c, n in zip(data.classes, counts, strict=True) if not n]
        raise ConfigError(f"trainer.class_weights=balanced: classes {empty[:5]} have no training images")
    return [(total - n) / n for n in counts]
