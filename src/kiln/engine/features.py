"""A frozen backbone, computed once. With ``model.freeze: backbone`` and frozen BatchNorm only the head
learns, so the backbone's output for an image and an augmentation view never changes: kiln computes it
once per (image, view) and trains the head on those features, with the same batches, optimizer steps,
schedule and callbacks as full forward passes (``train_one_epoch`` runs unchanged on the head).

Views come from the photo pipeline's per-image draws (``data.augment.views``: epochs cycle through K of
them); without random augmentation there is one view, computed before the first epoch and reused by all.
Validation features are the evaluation view, test-time views averaged (exact for the linear head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kiln.config import Config
from kiln.console import log
from kiln.data import DataBundle
from kiln.data.loaders import EpochOrder, MemoryLoader
from kiln.engine.distributed import Dist
from kiln.engine.loop import EvalOptions, StepOptions, tta_views
from kiln.models.transfer import head_name, without_head


class Features:
    """What ``train_one_epoch``/``evaluate`` take as the transform when the inputs are features already."""

    def train(self, x: torch.Tensor, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, None]:
        return x, None

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FrozenFeatures:
    def __init__(
        self, model: nn.Module, data: DataBundle, step: StepOptions, evaluation: EvalOptions, batch_size: int
    ) -> None:
        self.model, self.data, self.step, self.evaluation, self.batch_size = (
            model,
            data,
            step,
            evaluation,
            batch_size,
        )
        self.head = head_name(model)
        a = data.transform.augment
        self.random = data.transform.photo and (a.photo or a.hflip)  # per-image draws: one view per draw
        self.views: dict[int, torch.Tensor] = {}
        self.val: torch.Tensor | None = None

    @torch.no_grad()
    def _extract(self, loader: Any, prepare: Any) -> torch.Tensor:
        out: torch.Tensor | None = None
        with without_head(self.model) as backbone:
            for x, idx in loader.in_order(self.batch_size):
                views = prepare(x, idx)
                if self.step.channels_last:
                    views = [(v.contiguous(memory_format=torch.channels_last), w) for v, w in views]
                with self.step.autocast():
                    f = sum(w * backbone(v).float() for v, w in views)
                if out is None:
                    out = torch.empty((loader.order.n, *f.shape[1:]), dtype=torch.float32, device=f.device)
                out[idx.to(f.device)] = f
        assert out is not None
        return out

    def train_loader(self, epoch: int) -> MemoryLoader:
        """This epoch's features, batched in the epoch's own order (the train loader's, shared)."""
        train, t = self.data.train, self.data.transform
        view = t.view_of(epoch) if self.random else 0
        if view not in self.views:
            if len(self.views) >= 8:  # memory: keep a few views
                self.views.clear()
            prepare = (
                (lambda x, idx: [(t.view(x, idx, view), 1.0)])
                if t.photo
                else (lambda x, idx: [(t.normalize(x), 1.0)])
            )
            self.views[view] = self._extract(train, prepare)
        return MemoryLoader(self.views[view], train.labels, train.order, train.device)  # type: ignore[union-attr]

    def val_loader(self) -> MemoryLoader | None:
        val = self.data.val
        if val is None:
            return None
        if self.val is None:
            t = self.data.transform
            self.val = self._extract(val, lambda x, idx: tta_views(t.eval(x), self.evaluation.tta))
        return MemoryLoader(
            self.val, val.labels, EpochOrder(val.order.n, val.order.batch_size, False, 0), val.device
        )

    def train_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first view's features of every train image, and their labels (computed once either way)."""
        loader = self.train_loader(0)
        return loader.images, loader.labels

    def head_of(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.head)

    @property
    def step_options(self) -> StepOptions:
        return StepOptions(self.step.accumulate, self.step.grad_clip, self.step.log_every, self.step.skip_nan)

    @property
    def eval_options(self) -> EvalOptions:
        return EvalOptions(metric_fns=self.evaluation.metric_fns)  # test-time views are in the features


def frozen_features(
    cfg: Config, model: nn.Module, data: DataBundle, step: StepOptions, evaluation: EvalOptions, d: Dist
) -> FrozenFeatures | None:
    """The feature path when it applies: a frozen backbone (and BatchNorm), one process, no pair mixing,
    and augmentation drawn per image (the photo pipeline) or none."""
    a, t = cfg.data.augment, cfg.trainer
    reasons = [
        why
        for why, bad in (
            ("trainer.frozen_features=off", t.frozen_features == "off"),
            ("model.freeze is not `backbone`", cfg.model.freeze != "backbone"),
            ("model.freeze_bn is off", not cfg.model.freeze_bn),
            ("DDP", d.enabled),
            ("mixup/cutmix mix pairs of a batch", a.mixup > 0 or a.cutmix > 0),
            (
                "CIFAR-style augmentation is drawn per batch",
                bool(a.crop_padding or a.cutout or a.alternating_flip)
                or (a.hflip and not data.transform.photo),
            ),
        )
        if bad
    ]
    if cfg.model.freeze == "backbone" and reasons and t.frozen_features == "auto":
        log(f"kiln: frozen backbone, full forward passes ({'; '.join(reasons)})")
    if reasons:
        return None
    f = FrozenFeatures(
        model, data, step, evaluation, data.val.order.batch_size if data.val is not None else 8
    )
    views = "one view" if not f.random else f"{a.views} views" if a.views else "a new view each epoch"
    log(
        f"kiln: frozen backbone: its features are computed once per image and view ({views}) and the head "
        "trains on them (trainer.frozen_features=off for full passes)"
    )
    return f
