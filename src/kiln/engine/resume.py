"""Resuming: which checkpoint ``--resume auto`` picks (``find_resume``), and refusing one of another model,
optimizer or dataset (``check_compatible``). What a checkpoint holds and how a run goes back to it are
``Run.state_dict`` / ``Run.load_state_dict`` (``run.py``)."""

from __future__ import annotations

from typing import Any

import kiln.checkpoint as ckpt
from kiln.config import Config
from kiln.console import log
from kiln.errors import CheckpointError
from kiln.paths import RunDir


def check_compatible(path: str, cfg: Config, saved: dict[str, Any], classes: list[str]) -> None:
    """Refuse a checkpoint of another model, optimizer, data source or class list, naming what differs."""
    if saved.get("classes") != list(classes):
        raise CheckpointError(
            f"{path}: trained on classes {str(saved.get('classes'))[:200]}, but the data now has "
            f"{str(list(classes))[:200]}; resume with the same data"
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
    log(f"kiln: --resume auto: no checkpoint in {run.root / 'checkpoints'} yet; starting from the beginning")
    return None
