"""Rebuild a trained model from a kiln checkpoint (for eval, export and predict)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

import kiln.checkpoint as ckpt
from kiln.config import Config, apply_overrides, read_config_file, validate
from kiln.errors import CheckpointError, KilnError
from kiln.models import rebuild
from kiln.recipe import ModelRecipe
from kiln.spec import Preprocess


@dataclass
class Restored:
    model: nn.Module  # in eval mode, on the CPU, with the checkpoint's (EMA, when used) weights
    config: Config  # the checkpoint's resolved config (or the one given), overrides applied
    recipe: ModelRecipe  # what the model is: its network, input and outputs
    checkpoint: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.recipe.classes.ids)

    @property
    def class_names(self) -> list[str]:  # display names in label order (the ids when the run had none)
        return list(self.recipe.classes.names)

    @property
    def preprocess(self) -> Preprocess:
        return self.recipe.preprocess


def restore(
    path: str | Path,
    overrides: list[str] | None = None,
    config_path: str | Path | None = None,
    key: str = "--checkpoint",
) -> Restored:
    """The model of a kiln checkpoint; ``key`` is the option that named it (``--model`` for predict)."""
    saved = ckpt.load(path, key)
    raw = read_config_file(config_path) if config_path else saved["config"]
    cfg = validate(apply_overrides(raw, list(overrides or [])))
    try:
        recipe = ModelRecipe.from_json(saved["recipe"], f"{path} (its recipe)")
    except KilnError as e:
        raise CheckpointError(str(e)) from None
    # a config or override that names another network is honoured (and its weights must fit)
    recipe = replace(recipe, model=cfg.model.name, args=dict(cfg.model.args))
    model = rebuild(recipe)
    ckpt.load_weights(model, saved["model_state_dict"], path)
    return Restored(model.eval(), cfg, recipe, saved)
