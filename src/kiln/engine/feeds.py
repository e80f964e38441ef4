"""How an epoch is fed, decided once per run: ``LiveImages`` (the model on the images) or ``CachedFeatures``
(a frozen backbone's features, computed once; the head trains on them). Both answer the same two
questions, so the epoch loop has no branch for either:

- ``epoch_inputs(epoch)``: the model the step calls, the loader, the batch transform, the step options
  and the BatchNorm layers kept in eval mode;
- ``eval_inputs(split, model)``: the model (what ``model``, the run's evaluation model, becomes on this
  feed), loader, transform and options an evaluation of that split runs.

Each feed owns its resume state (the position in the epoch's sample order): ``state_dict`` /
``load_state_dict``, saved in every checkpoint as ``data_state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kiln.checkpoint as ckpt
from kiln.console import log
from kiln.data import TrainData
from kiln.data.loaders import EpochOrder, MemoryLoader
from kiln.engine import features
from kiln.engine.evaluate import EvalOptions
from kiln.engine.loop import StepOptions
from kiln.models.transfer import head_name


@dataclass(frozen=True)
class EpochInputs:
    model: nn.Module  # what the step calls
    loader: Any  # MemoryLoader | StreamLoader
    transform: Any  # BatchTransform, or FEATURES for inputs that are features already
    options: StepOptions
    frozen_bn: Sequence[nn.Module] = ()  # BatchNorm layers that stay in eval mode


@dataclass(frozen=True)
class EvalInputs:
    model: nn.Module
    loader: Any
    transform: Any
    options: EvalOptions


class Identity:
    """The batch transform of inputs that are features already (what the loop calls on them)."""

    def train(self, x: torch.Tensor, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, None]:
        return x, None

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        return x


FEATURES = Identity()


class LiveImages:
    """The model on the images: decoded (or streamed) and augmented on the device every step."""

    def __init__(
        self,
        train_model: nn.Module,
        data: TrainData,
        step: StepOptions,
        evaluation: EvalOptions,
        frozen_bn: Sequence[nn.Module],
    ) -> None:
        self.train_model, self.data = train_model, data
        self.step, self.evaluation, self.frozen_bn = step, evaluation, frozen_bn

    def epoch_inputs(self, epoch: int) -> EpochInputs:
        self.data.train.materialize()  # the first epoch decodes (a phase of its own), later ones reuse
        return EpochInputs(self.train_model, self.data.train, self.data.transform, self.step, self.frozen_bn)

    def eval_inputs(self, split: str, model: nn.Module) -> EvalInputs | None:
        loader = self.data.loader(split)
        if loader is None:
            return None
        loader.materialize()
        return EvalInputs(model, loader, self.data.transform, self.evaluation)

    def state_dict(self) -> dict[str, int]:
        return self.data.train.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.data.train.load_state_dict(state)


class CachedFeatures:
    """A frozen backbone's features (``features.py``); the head trains on them with the same batches,
    optimizer steps, schedule and callbacks as full forward passes. From ``unfreeze_at`` on (1-based
    epoch), the live images again."""

    def __init__(
        self,
        live: LiveImages,
        model: nn.Module,
        data: TrainData,
        views: int,
        random: bool,
        unfreeze_at: int | None,
        cache_dir: Path | None,
        precision: str,
    ) -> None:
        self.live, self.model, self.data = live, model, data
        self.views, self.random, self.unfreeze_at, self.cache_dir = views, random, unfreeze_at, cache_dir
        self.head = head_name(model)
        numerics = features.numerics(precision, live.step.channels_last, data.preprocess)
        self.keys = features.FeatureKeys(features.digest(model, self.head), numerics)
        train = data.train
        self.order = EpochOrder(train.order.n, train.order.batch_size, True, train.order.seed)  # as train's
        self.train_views: dict[int, torch.Tensor] = {}
        self.evals: dict[str, torch.Tensor] = {}
        self.epoch = 0
        self.batch = data.val.order.batch_size if data.val is not None else 8  # evaluation-sized batches

    def frozen(self, epoch: int) -> bool:
        return self.unfreeze_at is None or epoch + 1 < self.unfreeze_at

    def epoch_inputs(self, epoch: int) -> EpochInputs:
        self.epoch = epoch
        if not self.frozen(epoch):
            return self.live.epoch_inputs(epoch)
        view = self.data.transform.view_of(epoch) if self.random else 0
        loader = MemoryLoader(
            self.train_features()[view], self.data.train.raw_labels, self.order, self.data.train.device
        )
        return EpochInputs(
            self.model.get_submodule(self.head), loader, FEATURES, features.head_options(self.live.step)
        )

    def train_features(self) -> dict[int, torch.Tensor]:
        """Every view's features of the train split: from the cache, the missing ones in one pass."""
        if len(self.train_views) < self.views:
            transform = self.data.transform
            content = self.data.content_key("train")
            # a view's draws depend on (seed, view, augmentation), not on how many views there are
            aug = self.data.transform.augment.model_dump(mode="json", exclude={"views"})

            keys = {}
            for view in range(self.views):
                desc = {
                    "split": "train",
                    "view": view,
                    "seed": transform.seed,
                    "augment": aug,
                    "size": transform.train_size,
                    "random": self.random,
                }
                keys[str(view)] = self.keys.key(content, desc)

            def prepare(view: int) -> features.Prepare:
                if transform.photo:
                    return lambda x, idx: [(transform.view(x, idx, view), 1.0)]
                return lambda x, idx: [(transform.normalize(x), 1.0)]

            def compute(names: Sequence[str]) -> dict[str, torch.Tensor]:
                self.data.train.materialize()
                desc = f"backbone features of {self.data.train.order.n:,} train images x {len(names)} view(s)"
                return features.extract(
                    self.model,
                    self.data.train,
                    {n: prepare(int(n)) for n in names},
                    self.live.step,
                    self.batch,
                    desc,
                )

            found = features.cached_features(
                self.cache_dir, keys, compute, "train features", self.data.train.device
            )
            self.train_views = {int(name): tensor for name, tensor in found.items()}
        return self.train_views

    def eval_inputs(self, split: str, model: nn.Module) -> EvalInputs | None:
        if not self.frozen(self.epoch):
            return self.live.eval_inputs(split, model)
        loader = self.data.loader(split)
        if loader is None:
            return None
        if split not in self.evals:
            self.evals[split] = features.eval_features(
                self.model,
                loader,
                self.data.transform,
                self.keys,
                self.data.content_key(split),
                split,
                self.live.evaluation.tta,
                self.live.step,
                self.batch,
                self.cache_dir,
            )
        order = EpochOrder(loader.order.n, loader.order.batch_size, False, 0)
        head = ckpt.unwrap(model).get_submodule(self.head)
        return EvalInputs(
            head,
            MemoryLoader(self.evals[split], loader.raw_labels, order, loader.device),
            FEATURES,
            features.head_eval_options(self.live.evaluation),
        )

    def state_dict(self) -> dict[str, int]:
        order = self.order if self.frozen(self.epoch) else self.data.train.order
        return {"epoch": order.epoch, "position": order.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.order.epoch, self.order.position = int(state["epoch"]), int(state["position"])
        self.live.load_state_dict(state)


def make_feed(
    live: LiveImages,
    model: nn.Module,
    data: TrainData,
    cfg: Any,
    cache_dir: Path | None,
    precision: str,
    distributed: bool,
) -> LiveImages | CachedFeatures:
    """The feed the config asks for (the frozen-feature path when it applies), said in the log."""
    applies, reasons = features.feature_path(cfg, data.transform.photo, distributed)
    if cfg.model.freeze == "backbone" and reasons and cfg.trainer.frozen_features == "auto":
        log(f"kiln: frozen backbone, full forward passes ({'; '.join(reasons)})")
    if not applies:
        return live
    augment = data.transform.augment
    random = data.transform.photo and (augment.photo or augment.hflip)  # per-image draws: one view each
    views = (augment.views or 1) if random else 1
    unfreeze = cfg.trainer.unfreeze.at_epoch if cfg.trainer.unfreeze else None
    how = (
        "one view"
        if not random
        else f"{views} augmentation views (data.augment.views; epochs cycle through them)"
    )
    log(
        f"kiln: frozen backbone: its features are computed once per image for {how}, kept in the cache for "
        "later runs, and the head trains on them (trainer.frozen_features=off for full passes)"
    )
    return CachedFeatures(live, model, data, views, random, unfreeze, cache_dir, precision)
