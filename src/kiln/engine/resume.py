"""Checkpoint contents and resume: what a checkpoint holds, how a run continues from one, and which
file `--resume auto` picks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import kiln
from kiln import data as kdata
from kiln.config import Config
from kiln.engine import checkpoint as ckpt
from kiln.engine.distributed import gather_objects
from kiln.engine.loop import Engine, TrainState
from kiln.engine.progress import log
from kiln.errors import CheckpointError
from kiln.optim import add_param_group


def unfreeze(cfg: Config, engine: Engine) -> None:
    """Gradual unfreezing: the frozen parameters join the optimizer as a new group (lr x lr_mult)."""
    names = set(engine.frozen)
    params = [
        p for n, p in ckpt.unwrap(engine.model).named_parameters() if n in names and not p.requires_grad
    ]
    if not params or cfg.trainer.unfreeze is None:
        return
    for p in params:
        p.requires_grad_(True)
    engine.frozen_bn = []
    add_param_group(engine.optimizer, engine.scheduler, params, cfg.trainer.unfreeze.lr_mult,
                    cfg.optimizer.weight_decay)  # fmt: skip
    log(f"kiln: unfroze {len(params)} parameter tensors at epoch {cfg.trainer.unfreeze.at_epoch} "
        f"(lr x {cfg.trainer.unfreeze.lr_mult})")  # fmt: skip


def callback_keys(callbacks: list[Any]) -> list[tuple[str, Any]]:
    """Stable keys for callback states: class name and occurrence ("EarlyStopping#0"), so adding or removing
    another callback between runs never hands a state to the wrong one."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        name = type(cb).__name__
        out.append((f"{name}#{seen.get(name, 0)}", cb))
        seen[name] = seen.get(name, 0) + 1
    return out


def make_checkpoint(cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle,
                    metrics: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The checkpoint payload. Under DDP every rank must call this (it gathers each rank's RNG state)."""
    rngs = gather_objects(engine.dist, ckpt.rng_state())
    return {
        "model_state_dict": ckpt.unwrap(engine.eval_model).state_dict(),  # EMA weights when EMA is on
        "train_state_dict": ckpt.unwrap(engine.model).state_dict() if engine.ema is not None else None,
        "ema_state_dict": engine.ema.state_dict() if engine.ema is not None else None,
        "optimizer_state_dict": engine.optimizer.state_dict(),
        "scheduler_state_dict": engine.scheduler.state_dict(),
        "scaler_state_dict": engine.scaler.state_dict(),
        "epoch": state.epoch, "step": state.step, "loss": state.last_loss,
        "best_metric": state.best_metric, "best_epoch": state.best_epoch,
        "callbacks": {key: cb.state_dict() for key, cb in callback_keys(engine.callbacks)},
        "rng": rngs[0], "rng_per_rank": rngs if len(rngs) > 1 else None, "data_state": bundle.train.state_dict(),
        "config": cfg.to_dict(), "classes": list(bundle.classes), "preprocess": bundle.preprocess(),
        "metrics": metrics, "kiln_version": kiln.__version__, "torch_version": str(torch.__version__),
    }  # fmt: skip


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout (e.g. channels_last) of its parameter: fused kernels
    assume they match, and a checkpoint stores contiguous tensors (mismatch = wrong results or a crash)."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def restore(path: str, cfg: Config, engine: Engine, state: TrainState, bundle: kdata.DataBundle) -> None:
    saved = ckpt.load(path)
    if cfg.trainer.unfreeze and saved.get("epoch", 0) >= cfg.trainer.unfreeze.at_epoch:
        unfreeze(cfg, engine)  # the checkpoint's optimizer already has the unfrozen group
    if saved.get("classes") != list(bundle.classes):
        raise CheckpointError(f"{path}: trained on classes {saved.get('classes')}, but the data now has "
                              f"{list(bundle.classes)}; resume with the same data")  # fmt: skip
    old = saved.get("config", {})
    for section, keys in (("model", None), ("optimizer", ("name",)), ("data", ("source",))):
        # a key the checkpoint lacks was added to kiln after it was written: that run had the default
        defaults = type(getattr(cfg, section))().model_dump(mode="json")
        diff = config_diff({**defaults, **old.get(section, {})}, cfg.to_dict()[section], section, keys)
        if diff:
            raise CheckpointError(f"{path}: the {section} differs from the checkpoint's ({'; '.join(diff)}); "
                                  f"resume with the same {section} settings, or start anew from its weights "
                                  f"with model.pretrained={path}")  # fmt: skip
    ckpt.load_weights(
        ckpt.unwrap(engine.model), saved.get("train_state_dict") or saved["model_state_dict"], path
    )
    try:
        engine.optimizer.load_state_dict(saved["optimizer_state_dict"])
        match_param_layout(engine.optimizer)
        if engine.ema is not None and saved.get("ema_state_dict"):
            engine.ema.load_state_dict(saved["ema_state_dict"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path}: does not fit this model/optimizer: {str(e).splitlines()[0]}"
        ) from None
    engine.scheduler.load_state_dict(saved["scheduler_state_dict"])
    engine.scaler.load_state_dict(saved["scaler_state_dict"])
    state.epoch, state.step, state.last_loss = saved["epoch"], saved["step"], saved.get("loss")
    state.best_metric, state.best_epoch = saved.get("best_metric"), saved.get("best_epoch")
    states = saved.get("callbacks", {})
    for key, cb in callback_keys(engine.callbacks):
        if key in states:  # the same class, the same occurrence: its own saved state
            cb.load_state_dict(states[key])
    bundle.train.load_state_dict(saved["data_state"])
    per_rank = saved.get("rng_per_rank") or []
    rank = engine.dist.rank
    # last: nothing after this may draw random numbers before training
    ckpt.set_rng_state(per_rank[rank] if rank < len(per_rank) else saved["rng"])


def save_epoch_checkpoints(cfg: Config, run_dir: Path, payload: dict[str, Any], improved: bool) -> None:
    cdir = run_dir / "checkpoints"
    if improved:
        ckpt.save(payload, cdir / "best.pt")
    ckpt.save(payload, cdir / "last.pt")
    every, epoch = cfg.trainer.checkpoint.every_n_epochs, payload["epoch"]
    if every and epoch % every == 0:
        ckpt.save(payload, cdir / f"epoch-{epoch}.pt")
        kept = sorted(cdir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        for old in kept[: -cfg.trainer.checkpoint.keep]:
            old.unlink(missing_ok=True)


def config_diff(
    old: dict[str, Any], new: dict[str, Any], prefix: str, keys: tuple[str, ...] | None
) -> list[str]:
    """'key: old -> new' for the keys (all when None) whose values differ."""
    names = keys if keys is not None else sorted(set(old) | set(new))
    return [f"{prefix}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in names if old.get(k) != new.get(k)]


def find_resume(run_dir: Path) -> str | None:
    """`--resume auto`: the newest checkpoint of the run dir that loads, or None (a fresh start).
    A damaged newest file (a crash mid-write cannot leave one, but a disk can) is skipped with a note."""
    cdir = run_dir / "checkpoints"
    candidates = sorted((p for p in cdir.glob("*.pt") if p.name != "best.pt"), key=lambda p: p.stat().st_mtime,
                        reverse=True) if cdir.is_dir() else []  # fmt: skip
    for p in candidates:
        try:
            ckpt.load(p)
            return str(p)
        except CheckpointError as e:
            log(f"kiln: skipping {p}: {e}")
    return None
