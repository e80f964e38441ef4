"""``FeaturePlan``: whether the head trains on a frozen backbone's cached features (``features.py``), and how,
decided once from the config and the data's pipeline, and read by training, ``kiln eval``, ``lr-find`` and
``tune``. Nothing else asks the config these questions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kiln.config import Config
from kiln.data.cache import cache_folder

FEATURE_VIEWS = 4  # views per image when data.augment.views is unset and the backbone is frozen


@dataclass(frozen=True)
class FeaturePlan:
    """Whether the head trains on a frozen backbone's cached features, and how: decided once from the config
    and the data's pipeline (``plan_features``), and read by training, ``kiln eval``, ``lr-find`` and
    ``tune``. Nothing else asks the config these questions."""

    applies: bool
    reasons: tuple[str, ...]  # why it does not apply (when the backbone is frozen)
    random: bool  # training views are random draws of the photo augmentation (else the one fixed view)
    views: int  # train views computed per image
    unfreeze_at: int | None  # 1-based epoch from which the live images train (trainer.unfreeze)
    frozen_epochs: int  # the epochs the head trains on the features
    solve: bool  # the head is solved to its optimum (trainer.frozen_head=solve), not trained by epochs
    cache_dir: Path | None  # data.cache_dir (None: memory only)

    def frozen(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` trains on the features."""
        return self.applies and epoch < self.frozen_epochs

    def solves(self, epoch: int) -> bool:
        """Whether the head is solved before 0-based ``epoch`` (the frozen epochs are not done yet)."""
        return self.solve and self.frozen(epoch)

    def describe(self) -> str | None:
        """The log line saying how the run is fed (None for a backbone that is not frozen)."""
        if not self.applies:
            if any(r.startswith(("model.freeze is", "trainer.frozen_features")) for r in self.reasons):
                return None
            return f"kiln: frozen backbone, full forward passes ({'; '.join(self.reasons)})"
        how = (
            "one view"
            if not self.random
            else f"{self.views} augmentation views (data.augment.views; epochs cycle through them)"
        )
        head = (
            "the head is solved on them (trainer.frozen_head=solve: L-BFGS, its L2 strength chosen on val)"
            if self.solve
            else "the head trains on them"
        )
        return (
            f"kiln: frozen backbone: its features are computed once per image for {how}, kept in the cache "
            f"for later runs, and {head} (trainer.frozen_features=off for full passes)"
        )


def plan_features(cfg: Config, photo: bool) -> FeaturePlan:
    """The feature plan of ``cfg`` (``photo``: training takes the photo pipeline, as
    ``data.augment.photo_pipeline`` decides). It applies to a frozen backbone (and BatchNorm) without pair
    mixing, with augmentation drawn per image (the photo pipeline) or none; under DDP too, the feature pass
    sharded over the ranks."""
    aug, trainer = cfg.data.augment, cfg.trainer
    checks = [
        ("trainer.frozen_features=off", trainer.frozen_features == "off"),
        ("model.freeze is not `backbone`", cfg.model.freeze != "backbone"),
        ("model.freeze_bn is off", not cfg.model.freeze_bn),
        ("mixup/cutmix mix pairs of a batch", aug.mixup > 0 or aug.cutmix > 0),
        (
            "CIFAR-style augmentation is drawn per batch",
            bool(aug.crop_padding or aug.cutout or aug.alternating_flip) or (aug.hflip and not photo),
        ),
    ]
    reasons = tuple(why for why, bad in checks if bad)
    if trainer.unfreeze and trainer.unfreeze.at_epoch == 1:
        reasons += ("trainer.unfreeze trains the backbone from epoch 1",)
    random = photo and (aug.photo or aug.hflip)  # per-image draws: one view each
    epochs = math.ceil(trainer.epochs)
    unfreeze_at = trainer.unfreeze.at_epoch if trainer.unfreeze else None
    frozen_epochs = min(epochs, unfreeze_at - 1) if unfreeze_at else epochs
    if not random:
        views = 1
    elif aug.views:
        views = aug.views
    else:  # never more views than epochs trained on them; a solve sees every view at once
        views = FEATURE_VIEWS if trainer.frozen_head == "solve" else max(1, min(FEATURE_VIEWS, frozen_epochs))
    applies = not reasons
    return FeaturePlan(
        applies=applies,
        reasons=reasons,
        random=random,
        views=views,
        unfreeze_at=unfreeze_at,
        frozen_epochs=frozen_epochs if applies else 0,
        solve=applies and trainer.frozen_head == "solve",
        cache_dir=cache_folder(cfg.data.cache_dir),
    )


def frozen_recipe(cfg: Config) -> Config:
    """``cfg`` as the frozen recipe (``model.freeze=backbone``, the head solved on cached features): what a
    fine-tuning run's head starts from and what ``kiln audit`` reads, in the same cache as a frozen run."""
    model = cfg.model.model_copy(update={"freeze": "backbone", "freeze_bn": True})
    updates = {"unfreeze": None, "frozen_head": "solve", "frozen_features": "auto"}
    return cfg.model_copy(update={"model": model, "trainer": cfg.trainer.model_copy(update=updates)})


def frozen_twin(cfg: Config, photo: bool) -> FeaturePlan:
    """The feature plan the frozen recipe has for this config: the features a fine-tuning run's head starts
    from (``model.head_init: probe``), in the same cache."""
    return plan_features(frozen_recipe(cfg), photo)
