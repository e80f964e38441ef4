"""``Run``: one training run, owned in one place: the config, the run folder, the processes, the model with
its optimizer, schedule and wrappers, the data and how it feeds an epoch, the callbacks and the counters.
Its ``state_dict()`` is the checkpoint, and ``load_state_dict()`` puts a run back where a checkpoint was:
they sit side by side, so what is saved is what is restored. The checkpointing callback is handed the run
(``FitInfo.run``), as Lightning hands its callbacks the trainer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import kiln.checkpoint as ckpt
from kiln._version import __version__
from kiln.config import Config
from kiln.console import log
from kiln.data import TrainData
from kiln.engine.callbacks import CallbackList
from kiln.engine.checkpointing import Checkpoints
from kiln.engine.distributed import Dist, gather_objects
from kiln.engine.ema import EMA
from kiln.engine.evaluate import EvalOptions
from kiln.engine.feature_plan import FeaturePlan
from kiln.engine.feeds import CachedFeatures, LiveImages
from kiln.engine.init import Started
from kiln.engine.loop import Criterion, StepOptions, TrainState
from kiln.errors import CheckpointError
from kiln.optim import unfreeze
from kiln.paths import RunDir
from kiln.recipe import ClassList, ModelRecipe


@dataclass(frozen=True)
class Epochs:
    """trainer.epochs and trainer.val_every_n_epochs as the epoch loop reads them."""

    count: float  # may be fractional: the last epoch ends part way (airbench's 9.9)
    val_every: int = 1

    @property
    def total(self) -> int:
        """Epochs that run (the last one perhaps in part)."""
        return math.ceil(self.count)

    def batches(self, epoch: int, batches: int) -> int | None:
        """How many batches 0-based ``epoch`` trains: all (None), or the last epoch's fraction of them."""
        return math.ceil((self.count - epoch) * batches) if epoch + 1 == self.total else None

    def validates(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` is validated: every val_every-th, and always the last."""
        return (epoch + 1) % self.val_every == 0 or epoch + 1 == self.total


@dataclass(frozen=True)
class Unfreezing:
    """trainer.unfreeze as the run reads it: the 0-based epoch from which the parameters model.freeze froze
    train (None: never), at ``lr_mult`` times the LR, with the optimizer's weight decay."""

    epoch: int | None = None
    lr_mult: float = 1.0
    weight_decay: float = 0.0

    @classmethod
    def of(cls, cfg: Config) -> Unfreezing:
        spec = cfg.trainer.unfreeze
        if spec is None:
            return cls()
        return cls(spec.at_epoch - 1, spec.lr_mult, cfg.optimizer.weight_decay)

    def starts(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` is the first to train the frozen parameters."""
        return self.epoch == epoch


@dataclass
class Run:
    cfg: Config
    dir: RunDir
    dist: Dist
    device: torch.device
    data: TrainData
    model: nn.Module  # the plain module: weights, checkpoints, EMA and Lookahead hold its parameters
    train_model: nn.Module  # what the step calls: ``model`` under DDP and/or torch.compile
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule_steps: bool  # False for a constant LR: no Python-heavy scheduler call per step
    steps_per_epoch: int  # optimizer steps of a whole epoch (per rank: every rank takes as many)
    scaler: torch.amp.GradScaler
    ema: EMA | None
    step: StepOptions
    evaluation: EvalOptions
    epochs: Epochs
    frozen: list[str]  # parameter names frozen by model.freeze (trainer.unfreeze brings them back)
    unfreezing: Unfreezing  # when they train again
    features: FeaturePlan  # whether (and how) the head trains on a frozen backbone's cached features
    feed: LiveImages | CachedFeatures
    callbacks: CallbackList
    checkpoints: Checkpoints  # the one writer of last.pt, best.pt and epoch-N.pt
    state: TrainState = field(default_factory=TrainState)
    init_seconds: float = 0.0  # a data-dependent init (pca_init, head_init): training work, said apart
    start: Started | None = None  # a head that starts solved (model.head_init=probe): the run's epoch 0
    wrap: Callable[[nn.Module], nn.Module] | None = None  # model -> train_model (DDP, compile), as set up

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.train_model

    def unfreeze(self) -> None:
        """trainer.unfreeze: the frozen parameters join the optimizer (at its epoch, or on resume past it)."""
        spec = self.unfreezing
        if spec.epoch is None:
            return
        joined = unfreeze(
            self.model, self.optimizer, self.scheduler, self.frozen, spec.lr_mult, spec.weight_decay
        )
        if joined:
            log(f"kiln: unfroze {joined} parameter tensors at epoch {spec.epoch + 1} (lr x {spec.lr_mult})")
        if joined and self.dist.enabled and self.wrap is not None:
            # DDP averages the gradients of the parameters that trained when it was built: wrap anew
            self.train_model = self.wrap(self.model)
            live = self.feed if isinstance(self.feed, LiveImages) else self.feed.live
            live.train_model = self.train_model

    def recipe(self, thresholds: list[float] | None = None) -> ModelRecipe:
        """What the model is, beside its weights (multi-label ``thresholds``: tuned when training ends)."""
        classes = ClassList(
            tuple(self.data.classes), tuple(self.data.class_names), self.data.multi_label, None
        )
        model = self.cfg.model
        recipe = ModelRecipe(
            model.name,
            self.data.preprocess,
            classes,
            dict(model.args),
            tuple(self.cfg.imports),
            self.cfg.run.name,
        )
        return recipe if thresholds is None else recipe.with_thresholds(thresholds)

    def where(self) -> tuple[Any, ...]:
        """Where the run stands: a checkpoint written here need not be written again."""
        state = self.state
        return state.epoch, state.step, tuple(self.feed.state_dict().items()), state.pending is not None

    def state_dict(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint: PyTorch's tutorial keys, and everything a resume needs. Under DDP every rank
        calls this (it gathers each rank's RNG state)."""
        rngs = gather_objects(self.dist, ckpt.rng_state())
        return {
            "model_state_dict": ckpt.unwrap(self.eval_model).state_dict(),  # EMA weights when EMA is on
            "train_state_dict": self.model.state_dict() if self.ema is not None else None,
            "ema_state_dict": self.ema.state_dict() if self.ema is not None else None,
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "loss": self.state.last_loss,
            "pending_epoch": self.state.pending,  # an epoch trained but not yet validated (interrupted)
            "format": ckpt.FORMAT,
            "callbacks": self.callbacks.state_dict(),
            "checkpoints": self.checkpoints.state_dict(),
            "rng": rngs[0],
            "rng_per_rank": rngs if len(rngs) > 1 else None,
            "data_state": self.feed.state_dict(),
            "config": self.cfg.to_dict(),
            "recipe": self.recipe().to_json(),  # what the model is: network, input, outputs
            "train_counts": list(self.data.counts),  # images per class in the train split
            "metrics": metrics,
            "kiln_version": __version__,
            "torch_version": str(torch.__version__),
        }

    def load_state_dict(self, saved: dict[str, Any], path: str) -> None:
        """Put the run back where the checkpoint ``saved`` (read from ``path``) was: weights, optimizer,
        schedule, counters, callback states, the position in the epoch and every RNG."""
        if len(saved["optimizer_state_dict"]["param_groups"]) > len(self.optimizer.param_groups):
            self.unfreeze()  # the checkpoint's optimizer has the unfrozen group: its epoch had begun
        ckpt.load_weights(self.model, saved.get("train_state_dict") or saved["model_state_dict"], path)
        try:
            self.optimizer.load_state_dict(saved["optimizer_state_dict"])
            match_param_layout(self.optimizer)
            if self.ema is not None and saved.get("ema_state_dict"):
                self.ema.load_state_dict(saved["ema_state_dict"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path}: does not fit this model/optimizer: {str(e).splitlines()[0]}"
            ) from None
        self.scheduler.load_state_dict(saved["scheduler_state_dict"])
        self.scaler.load_state_dict(saved["scaler_state_dict"])
        self.state.epoch, self.state.step = saved["epoch"], saved["step"]
        self.state.last_loss, self.state.pending = saved.get("loss"), saved.get("pending_epoch")
        self.callbacks.load_state_dict(saved["callbacks"])
        self.checkpoints.load_state_dict(saved["checkpoints"])
        self.feed.load_state_dict(saved["data_state"])
        per_rank = saved.get("rng_per_rank") or []
        # last: nothing after this may draw random numbers before training
        ckpt.set_rng_state(per_rank[self.dist.rank] if self.dist.rank < len(per_rank) else saved["rng"])


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout (e.g. channels_last) of its parameter: fused kernels
    assume they match, and a checkpoint stores contiguous tensors (mismatch = wrong results or a crash)."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
