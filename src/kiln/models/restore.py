"""Rebuild a trained model from a kiln checkpoint (for eval, export and predict)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import kiln.checkpoint as ckpt
from kiln.config import Config, apply_overrides, read_config_file, validate
from kiln.errors import CheckpointError, KilnError
from kiln.models import rebuild
from kiln.spec import Preprocess


@dataclass
class Restored:
    model: nn.Module  # in eval mode, on the CPU, with the checkpoint's (EMA, when used) weights
    config: Config  # the checkpoint's resolved config (or the one given), overrides applied
    classes: list[str]
    preprocess: Preprocess
    checkpoint: dict[str, Any]
    class_names: list[str]  # display names in label order (the ids when the run had none)


def restore(
    path: str | Path,
    overrides: list[str] | None = None,
    config_path: str | Path | None = None,
    key: str = "--checkpoint",
) -> Restored:
    """The model of a kiln checkpoint; ``key`` is the option that named it (``--model`` for predict)."""
    saved = ckpt.load(path, key)
    raw = read_config_file(config_path) if config_path else saved.get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds no config; pass one with -c CONFIG")
    cfg = validate(apply_overrides(raw, list(overrides or [])))
    classes = list(saved.get("classes") or [])
    record = saved.get("preprocess") or {}
    if not classes or not record:
        raise CheckpointError(f"{path}: has no class list or preprocessing record; was it written by kiln?")
    try:
        preprocess = Preprocess.from_json(record, f"{path} (its preprocess record)")
    except KilnError as e:
        raise CheckpointError(str(e)) from None
    model = rebuild(
        {"model": cfg.model.model_dump(), "classes": classes, "preprocess": record, "imports": cfg.imports}
    )
    ckpt.load_weights(model, saved["model_state_dict"], path)
    names = list(saved.get("class_names") or classes)
    return Restored(
        model.eval(), cfg, classes, preprocess, saved, names if len(names) == len(classes) else classes
    )
