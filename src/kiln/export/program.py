"""``torch.export`` programs (``.pt2``) and safetensors weight exports.

A ``.pt2`` holds the traced graph with a symbolic batch dimension; ``torch.export.load`` unpickles parts of
the file, so kiln loads one only when the user says it is trusted (``kiln predict --trust``). A safetensors
export holds tensors only (no code can run from it) plus ``model.json``: the recipe to rebuild the network
with kiln, the class names and the preprocessing. It is the format to share.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kiln.checkpoint as ckpt
from kiln.errors import CheckpointError
from kiln.export import ArtifactError, ExportError
from kiln.export.base import ExportOptions, Format, Runner, Saved, per_batch, torch_runner
from kiln.export.onnx import _data_dependent_hint, _first_line, quiet_export
from kiln.models import rebuild

SAFETENSORS_FORMAT = "kiln-safetensors/1"


def save_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    if example.shape[0] < 2:  # torch.export specialises sizes 0 and 1, so a batch of 1 would be fixed
        raise ExportError("torch.export needs an example batch of at least 2 images")
    batch = torch.export.Dim("batch", min=1)  # no upper bound: the serving side picks its batch sizes
    try:
        with quiet_export():
            program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # UserError, GuardOnDataDependentSymNode, Unsupported, ...
        raise ExportError(
            f"torch.export of {type(model).__name__} failed: {_first_line(e)}{_data_dependent_hint(e)}"
        ) from None
    torch.export.save(program, str(path))
    return ["torch.export program; batch dimension symbolic (Dim 'batch', min 1)"]


def load_pt2(path: Path) -> nn.Module:
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:  # RuntimeError, zipfile errors, SerializeError...
        raise ArtifactError(f"{path}: not a loadable torch.export program ({_first_line(e)})") from None


def save_safetensors(model: nn.Module, path: Path, recipe: dict[str, Any]) -> list[str]:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share memory (tied weights); each entry gets its own copy
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": SAFETENSORS_FORMAT, "recipe": "model.json"})
    (path.parent / "model.json").write_text(json.dumps({"format": SAFETENSORS_FORMAT, **recipe}, indent=2))
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


def load_safetensors(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from model.json and load the weights (tensors only: nothing executes)."""
    weights, recipe_path = find_safetensors(path)
    try:
        recipe = json.loads(recipe_path.read_text())
        model = rebuild(recipe)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{recipe_path}: not a kiln model.json ({type(e).__name__}: {e})") from None
    try:
        state = ckpt.read_weights(weights, key="--model")
    except CheckpointError as e:
        raise ArtifactError(str(e)) from None
    ckpt.load_weights(model, state, weights)
    return model.eval(), recipe


class Pt2(Format):
    name, suffix = "export", ".pt2"

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: dict[str, Any],
        opts: ExportOptions,
    ) -> Saved:
        path = out_dir / f"{opts.name or 'model'}.pt2"
        notes = save_pt2(model, example, path)
        return Saved(
            path,
            out_dir,
            per_batch(torch_runner(load_pt2(path))),
            notes,
            loaded_by={"loader": "torch.export.load"},
        )

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Runner:
        if not trust:
            raise ArtifactError(
                f"{path}: torch.export.load unpickles parts of a .pt2 file, which can run code "
                "from it; pass --trust if you made it or trust its source (or share the ONNX "
                "or safetensors export instead)"
            )
        return torch_runner(load_pt2(path), device)


class Safetensors(Format):
    name, suffix = "safetensors", ".safetensors"

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: dict[str, Any],
        opts: ExportOptions,
    ) -> Saved:
        if opts.name not in (None, "model"):  # the loader looks for model.json beside it
            raise ExportError(
                "--name does not apply to --format safetensors (files are model.safetensors/.json)"
            )
        path = out_dir / "model.safetensors"
        keep = ("model", "imports", "classes", "preprocess")
        notes = save_safetensors(
            model, path, {**{k: recipe[k] for k in keep}, "torch_version": torch.__version__}
        )
        return Saved(
            path,
            out_dir,
            per_batch(torch_runner(load_safetensors(path)[0])),
            notes,
            loaded_by={"loader": "kiln: model rebuilt from model.json, weights from safetensors"},
        )

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Runner:
        return torch_runner(load_safetensors(path)[0], device)
