"""``torch.export`` programs (``--format export``, ``model.pt2``): the traced graph with a symbolic batch
dimension. ``torch.export.load`` unpickles parts of the file, so kiln loads one only when the user says it
is trusted (``kiln predict --trust``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kiln.export import ArtifactError, ExportError
from kiln.export.base import ExportOptions, Format, Loaded, Saved, per_batch, torch_runner
from kiln.export.tracing import data_dependent_hint, first_line, quiet_export
from kiln.recipe import ModelRecipe
from kiln.registry import register_format


def save_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    if example.shape[0] < 2:  # torch.export specialises sizes 0 and 1, so a batch of 1 would be fixed
        raise ExportError("torch.export needs an example batch of at least 2 images")
    batch = torch.export.Dim("batch", min=1)  # no upper bound: the serving side picks its batch sizes
    try:
        with quiet_export():
            program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # UserError, GuardOnDataDependentSymNode, Unsupported, ...
        raise ExportError(
            f"torch.export of {type(model).__name__} failed: {first_line(e)}{data_dependent_hint(e)}"
        ) from None
    torch.export.save(program, str(path))
    return ["torch.export program; batch dimension symbolic (Dim 'batch', min 1)"]


def load_pt2(path: Path) -> nn.Module:
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:  # RuntimeError, zipfile errors, SerializeError...
        raise ArtifactError(f"{path}: not a loadable torch.export program ({first_line(e)})") from None


@register_format("export")
class Pt2(Format):
    name, suffix = "export", ".pt2"

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: ModelRecipe,
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

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Loaded:
        if not trust:
            raise ArtifactError(
                f"{path}: torch.export.load unpickles parts of a .pt2 file, which can run code "
                "from it; pass --trust if you made it or trust its source (or share the ONNX "
                "or safetensors export instead)"
            )
        return self.loaded(torch_runner(load_pt2(path), device), path, device)
