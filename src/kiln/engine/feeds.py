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
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import kiln.checkpoint as ckpt
from kiln.console import log
from kiln.data import TrainData
from kiln.data.loaders import MemoryLoader
from kiln.engine import features
from kiln.engine.distributed import Dist
from kiln.engine.evaluate import EvalOptions
from kiln.engine.feature_plan import FeaturePlan
from kiln.engine.head_solver import Rows
from kiln.engine.loop import StepOptions
from kiln.models.transfer import Head, head_name

FEATURE_BATCH = 1024  # rows of features per evaluation batch: a linear head on them is a small matmul


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
    """A frozen backbone's features (``features.py``, as ``plan`` says); the head trains on them with the same
    batches, sampler, shards, optimizer steps, schedule and callbacks as full forward passes, or is solved
    on them (``solve_candidates``). From ``plan.frozen_epochs`` on, the live images again."""

    def __init__(
        self,
        live: LiveImages,
        model: nn.Module,
        data: TrainData,
        plan: FeaturePlan,
        keys: features.FeatureKeys,
        dist: Dist,
        prior: Head | None = None,
    ) -> None:
        self.live, self.model, self.data, self.plan = live, model, data, plan
        self.keys, self.dist = keys, dist
        self.prior = prior  # the pretrained classifier (weight, bias): a start the solve may shrink towards
        self.head_name = head_name(model)
        self.order = data.train.order.copy()  # the live epochs' order: sampler, seed and shard carry over
        self.train_views: dict[int, torch.Tensor] = {}
        self.evals: dict[str, torch.Tensor] = {}
        self.epoch = 0
        self.batch = data.val.order.batch_size if data.val is not None else 8  # evaluation-sized batches
        self._train_head: nn.Module | None = None

    def epoch_inputs(self, epoch: int) -> EpochInputs:
        self.epoch = epoch
        if not self.plan.frozen(epoch):
            return self.live.epoch_inputs(epoch)
        view = self.data.transform.view_of(epoch) if self.plan.random else 0
        loader = MemoryLoader(
            self.train_features()[view], self.data.train.raw_labels, self.order, self.data.train.device
        )
        return EpochInputs(self.train_head(), loader, FEATURES, features.head_options(self.live.step))

    def train_head(self) -> nn.Module:
        """What a step on features calls: the head, under DDP wrapped alone (its gradients averaged over
        the ranks' shards; the whole model's DDP never sees a forward while the backbone is frozen)."""
        if self._train_head is None:
            head = self.model.get_submodule(self.head_name)
            trains = self.dist.enabled and any(p.requires_grad for p in head.parameters())
            self._train_head = DDP(head) if trains else head
        return self._train_head

    def train_features(self) -> dict[int, torch.Tensor]:
        """Every view's features of the train split: from the cache, the missing ones in one pass. Without
        random augmentation at the evaluation's size the one view is the evaluation view."""
        if not self.plan.random and self.data.transform.train_size == self.data.spec.size:
            return {0: self.centre_features()}
        if len(self.train_views) < self.plan.views:
            transform = self.data.transform
            content = self.data.content_key("train")
            # a view's draws depend on (seed, view, augmentation), not on how many views there are
            aug = self.data.transform.augment.model_dump(mode="json", exclude={"views"})

            keys = {}
            for view in range(self.plan.views):
                desc = {
                    "split": "train",
                    "view": view,
                    "seed": transform.seed,
                    "augment": aug,
                    "size": transform.train_size,
                    "random": self.plan.random,
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
                    self.dist,
                )

            found = features.cached_features(
                self.plan.cache_dir, keys, compute, "train features", self.data.train.device, self.dist
            )
            self.train_views = {int(name): tensor for name, tensor in found.items()}
        return self.train_views

    def split_features(self, split: str) -> torch.Tensor | None:
        """A split's evaluation-view features (every sample, on every rank), or None without the split."""
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
                self.plan.cache_dir,
                self.dist,
            )
        return self.evals[split]

    def eval_inputs(self, split: str, model: nn.Module) -> EvalInputs | None:
        if not self.plan.frozen(self.epoch):
            return self.live.eval_inputs(split, model)
        feats = self.split_features(split)
        if feats is None:
            return None
        loader = self.data.loader(split)
        assert loader is not None
        order = loader.order.copy(FEATURE_BATCH)  # the live evaluation's shard: each sample once
        head = ckpt.unwrap(model).get_submodule(self.head_name)
        return EvalInputs(
            head,
            MemoryLoader(feats, loader.raw_labels, order, loader.device),
            FEATURES,
            features.head_eval_options(self.live.evaluation),
        )

    def centre_features(self) -> torch.Tensor:
        """The train images in the evaluation's view (unaugmented, at the evaluation size): from the cache,
        else one pass. The solve's rows that look like what the head is judged and used on."""
        if "train" not in self.evals:
            transform = self.data.transform
            desc = {"split": "train", "view": "centre", "size": self.data.spec.size}
            key = self.keys.key(self.data.content_key("train"), desc)

            def compute(names: Sequence[str]) -> dict[str, torch.Tensor]:
                self.data.train.materialize()
                return features.extract(
                    self.model,
                    self.data.train,
                    {"centre": lambda x, idx: [(transform.train_centre(x, idx), 1.0)]},
                    self.live.step,
                    self.batch,
                    f"backbone features of {self.data.train.order.n:,} train images, evaluation view",
                    self.dist,
                )

            found = features.cached_features(
                self.plan.cache_dir,
                {"centre": key},
                compute,
                "train features (evaluation view)",
                self.data.train.device,
                self.dist,
            )
            self.evals["train"] = found["centre"]
        return self.evals["train"]

    def solve_candidates(self) -> list[tuple[str, Rows]]:
        """What the head may be solved on: the evaluation view of every train image, and with random
        augmentation also that plus its views; each in the order the sampler's epochs draw (a balanced
        sampler's draws repeat rare classes; a shuffle is every image once), on every rank all of it."""
        order = self.order.copy()
        order.rank, order.world = 0, 1  # the whole epoch, not this rank's shard
        labels = self.data.train.raw_labels

        def rows(tensors: list[torch.Tensor]) -> Rows:
            xs, ys, images = [], [], []
            for epoch, x in enumerate(tensors):
                order.set_epoch(epoch)
                idx = order.indices()
                xs.append(x.index_select(0, idx.to(x.device)))
                ys.append(labels.index_select(0, idx.to(labels.device)))
                images.append(idx)
            return Rows(torch.cat(xs), torch.cat(ys).to(xs[0].device), torch.cat(images))

        centre = self.centre_features()
        found = [("the evaluation view", rows([centre]))]
        if self.plan.random:
            views = self.train_features()
            both = rows([centre, *(views[v] for v in range(self.plan.views))])
            found.append((f"the evaluation view and {self.plan.views} augmentation views", both))
        return found

    def state_dict(self) -> dict[str, int]:
        order = self.order if self.plan.frozen(self.epoch) else self.data.train.order
        return {"epoch": order.epoch, "position": order.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.order.epoch, self.order.position = int(state["epoch"]), int(state["position"])
        self.live.load_state_dict(state)


def make_feed(
    live: LiveImages,
    model: nn.Module,
    data: TrainData,
    plan: FeaturePlan,
    precision: str,
    dist: Dist,
    prior: Head | None = None,
    quiet: bool = False,
) -> LiveImages | CachedFeatures:
    """The feed ``plan`` asks for (the frozen-feature path when it applies), said in the log. ``prior``: the
    pretrained classifier, which a solved head may start from."""
    line = None if quiet else plan.describe()
    if line:
        log(line)
    if not plan.applies:
        return live
    keys = features.feature_keys(model, precision, live.step.channels_last, data.preprocess)
    return CachedFeatures(live, model, data, plan, keys, dist, prior)
