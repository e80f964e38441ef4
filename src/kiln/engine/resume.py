"""Checkpoint contents and resume: what a checkpoint holds (``make_checkpoint``), how a run continues from
one (``restore``), and which file ``--resume auto`` picks (``find_resume``)."""

from __future__ import annotations

from typing import Any

import torch

import kiln.checkpoint as ckpt
from kiln._version import __version__
from kiln.config import Config
from kiln.console import log
from kiln.data import DataBundle
from kiln.engine.callbacks import CallbackList
from kiln.engine.distributed import Dist, gather_objects
from kiln.engine.loop import TrainState
from kiln.engine.setup import Parts
from kiln.errors import CheckpointError
from kiln.optim import add_param_group
from kiln.paths import RunDir


def make_checkpoint(
    cfg: Config,
    parts: Parts,
    state: TrainState,
    callbacks: CallbackList,
    data: DataBundle,
    d: Dist,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint payload. Under DDP every rank must call this (it gathers each rank's RNG state)."""
    rngs = gather_objects(d, ckpt.rng_state())
    return {
        "model_state_dict": ckpt.unwrap(parts.eval_model).state_dict(),  # EMA weights when EMA is on
        "train_state_dict": parts.model.state_dict() if parts.ema is not None else None,
        "ema_state_dict": parts.ema.state_dict() if parts.ema is not None else None,
        "optimizer_state_dict": parts.optimizer.state_dict(),
        "scheduler_state_dict": parts.scheduler.state_dict(),
        "scaler_state_dict": parts.scaler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "loss": state.last_loss,
        "callbacks": callbacks.state_dict(),
        "rng": rngs[0],
        "rng_per_rank": rngs if len(rngs) > 1 else None,
        "data_state": data.train.state_dict(),  # type: ignore[union-attr]
        "config": cfg.to_dict(),
        "classes": list(data.classes),
        "preprocess": data.preprocess(),
        "metrics": metrics,
        "kiln_version": __version__,
        "torch_version": str(torch.__version__),
    }


def unfreeze(cfg: Config, parts: Parts) -> None:
    """Gradual unfreezing: the frozen parameters join the optimizer as a new group (lr x lr_mult)."""
    names = set(parts.frozen)
    params = [p for n, p in parts.model.named_parameters() if n in names and not p.requires_grad]
    if not params or cfg.trainer.unfreeze is None:
        return
    for p in params:
        p.requires_grad_(True)
    add_param_group(
        parts.optimizer, parts.scheduler, params, cfg.trainer.unfreeze.lr_mult, cfg.optimizer.weight_decay
    )
    log(
        f"kiln: unfroze {len(params)} parameter tensors at epoch {cfg.trainer.unfreeze.at_epoch} "
        f"(lr x {cfg.trainer.unfreeze.lr_mult})"
    )


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout (e.g. channels_last) of its parameter: fused kernels
    assume they match, and a checkpoint stores contiguous tensors (mismatch = wrong results or a crash)."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def check_compatible(path: str, cfg: Config, saved: dict[str, Any], classes: list[str]) -> None:
    """Refuse a checkpoint of another model, optimizer, data source or class list, naming what differs."""
    if saved.get("classes") != list(classes):
        raise CheckpointError(
            f"{path}: trained on classes {saved.get('classes')}, but the data now has "
            f"{list(classes)}; resume with the same data"
        )
    old = saved.get("config", {})
    for section, keys in (("model", None), ("optimizer", ("name",)), ("data", ("source",))):
        # a key the checkpoint lacks was added to kiln after it was written: that run had the default
        defaults = type(getattr(cfg, section))().model_dump(mode="json")
        diff = config_diff({**defaults, **old.get(section, {})}, cfg.to_dict()[section], section, keys)
        if diff:
            raise CheckpointError(
                f"{path}: the {section} differs from the checkpoint's ({'; '.join(diff)}); "
                f"resume with the same {section} settings, or start anew from its weights "
                f"with model.pretrained={path}"
            )


def restore(
    path: str,
    cfg: Config,
    parts: Parts,
    state: TrainState,
    callbacks: CallbackList,
    data: DataBundle,
    d: Dist,
) -> None:
    """Put the run back where the checkpoint was: weights, optimizer, schedule, counters, callback states,
    the position in the epoch and every RNG."""
    saved = ckpt.load(path)
    check_compatible(path, cfg, saved, data.classes)
    if cfg.trainer.unfreeze and saved.get("epoch", 0) >= cfg.trainer.unfreeze.at_epoch:
        unfreeze(cfg, parts)  # the checkpoint's optimizer already has the unfrozen group
    ckpt.load_weights(parts.model, saved.get("train_state_dict") or saved["model_state_dict"], path)
    try:
        parts.optimizer.load_state_dict(saved["optimizer_state_dict"])
        match_param_layout(parts.optimizer)
        if parts.ema is not None and saved.get("ema_state_dict"):
            parts.ema.load_state_dict(saved["ema_state_dict"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path}: does not fit this model/optimizer: {str(e).splitlines()[0]}"
        ) from None
    parts.scheduler.load_state_dict(saved["scheduler_state_dict"])
    parts.scaler.load_state_dict(saved["scaler_state_dict"])
    state.epoch, state.step, state.last_loss = saved["epoch"], saved["step"], saved.get("loss")
    states = dict(saved.get("callbacks", {}))
    # checkpoints written before checkpointing was a callback kept the best metric at the top level only
    states.setdefault(
        "Checkpointing#0", {"best": saved.get("best_metric"), "best_epoch": saved.get("best_epoch")}
    )
    callbacks.load_state_dict(states)
    data.train.load_state_dict(saved["data_state"])  # type: ignore[union-attr]
    per_rank = saved.get("rng_per_rank") or []
    # last: nothing after this may draw random numbers before training
    ckpt.set_rng_state(per_rank[d.rank] if d.rank < len(per_rank) else saved["rng"])


def config_diff(
    old: dict[str, Any], new: dict[str, Any], prefix: str, keys: tuple[str, ...] | None
) -> list[str]:
    """'key: old -> new' for the keys (all when None) whose values differ."""
    names = keys if keys is not None else sorted(set(old) | set(new))
    return [f"{prefix}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in names if old.get(k) != new.get(k)]


def find_resume(run: RunDir) -> str | None:
    """`--resume auto`: the newest checkpoint of the run dir that loads, or None (a fresh start).
    A damaged newest file (a crash mid-write cannot leave one, but a disk can) is skipped with a note."""
    for p in run.resume_candidates():
        try:
            ckpt.load(p)
            return str(p)
        except CheckpointError as e:
            log(f"kiln: skipping {p}: {e}")
    return None
