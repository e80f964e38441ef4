"""safetensors weight exports: ``model.safetensors`` holds tensors only (no code can run from it) and
``model.json`` the recipe to rebuild the network with kiln, the classes (ids, display names, multi-label
thresholds) and the preprocessing. It is the format to share, and, with the checkpoint, the one kiln
rebuilds as a torch module (``kiln predict --explain`` needs one)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import kiln.checkpoint as ckpt
from kiln.errors import CheckpointError
from kiln.export import ArtifactError, ExportError
from kiln.export.base import ExportOptions, Format, Loaded, Saved, per_batch, torch_runner
from kiln.models import rebuild
from kiln.recipe import ModelRecipe
from kiln.registry import register_format

SAFETENSORS_FORMAT = "kiln-safetensors/2"


def save_safetensors(model: nn.Module, path: Path, recipe: ModelRecipe) -> list[str]:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share memory (tied weights); each entry gets its own copy
    state = {key: tensor.detach().cpu().clone().contiguous() for key, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": SAFETENSORS_FORMAT, "recipe": "model.json"})
    record = {"format": SAFETENSORS_FORMAT, **recipe.to_json(), "torch_version": torch.__version__}
    (path.parent / "model.json").write_text(json.dumps(record, indent=2))
    return [f"safetensors: {len(state)} tensors, no code; rebuild with kiln from model.json"]


def find_safetensors(path: Path) -> tuple[Path, Path]:
    """(weights file, model.json) for a safetensors export given as its folder or its .safetensors file."""
    weights = path / "model.safetensors" if path.is_dir() else path
    recipe = weights.parent / "model.json"
    if not weights.is_file():
        raise ArtifactError(
            f"{path}: no model.safetensors in it; was it written by kiln export --format safetensors?"
        )
    if not recipe.is_file():
        raise ArtifactError(
            f"{weights}: model.json is missing beside it; it holds the model recipe and classes"
        )
    return weights, recipe


def load_safetensors(path: Path) -> tuple[nn.Module, ModelRecipe]:
    """Rebuild the network from model.json and load the weights (tensors only: nothing executes)."""
    weights, recipe_path = find_safetensors(path)
    try:
        record = json.loads(recipe_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{recipe_path}: not a kiln model.json ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict) or record.get("format") != SAFETENSORS_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ArtifactError(
            f"{recipe_path}: a model.json of format {found}; this kiln reads {SAFETENSORS_FORMAT}"
        )
    recipe = ModelRecipe.from_json(record, str(recipe_path))
    model = rebuild(recipe)
    try:
        state = ckpt.read_weights(weights, key="--model")
    except CheckpointError as e:
        raise ArtifactError(str(e)) from None
    ckpt.load_weights(model, state, weights)
    return model.eval(), recipe


@register_format("safetensors")
class Safetensors(Format):
    name, suffix = "safetensors", ".safetensors"

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: ModelRecipe,
        opts: ExportOptions,
    ) -> Saved:
        if opts.name not in (None, "model"):  # the loader looks for model.json beside it
            raise ExportError(
                "--name does not apply to --format safetensors (files are model.safetensors/.json)"
            )
        path = out_dir / "model.safetensors"
        notes = save_safetensors(model, path, recipe)
        return Saved(
            path,
            out_dir,
            per_batch(torch_runner(load_safetensors(path)[0])),
            notes,
            loaded_by={"loader": "kiln: model rebuilt from model.json, weights from safetensors"},
        )

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Loaded:
        """The records come from model.json, the recipe beside the weights (not preprocess.json)."""
        model, recipe = load_safetensors(path)
        model = model.to(device)
        return Loaded(
            torch_runner(model, device), recipe.preprocess, recipe.classes, self.name, path, device, model
        )
