"""Loading any kiln model for inference: a checkpoint, or any export file or folder (each registered format
claims its own: TorchScript, .pt2, ONNX, safetensors, a Triton model folder or a repository holding one),
with its preprocessing and classes."""

from __future__ import annotations

from pathlib import Path

from kiln.export import ArtifactError
from kiln.export.base import Loaded, torch_runner
from kiln.export.formats import all_formats
from kiln.models.restore import restore

MODEL_FILES = ("model.safetensors", "model.onnx", "model.pt", "model.pt2")  # what an export folder holds


def load_any(path: str | Path, trust: bool = False, device: str = "cpu") -> Loaded:
    """A kiln checkpoint or any kiln export (file or folder), ready to run on ``device``."""
    artifact = Path(path)
    if not artifact.exists():
        raise ArtifactError(f"--model {artifact}: no such file or folder")
    if artifact.is_dir():
        artifact = _model_in(artifact)
    for form in all_formats():
        if form.claims(artifact):
            return form.load(artifact, trust, device)
    restored = restore(artifact, key="--model")  # a kiln checkpoint: torch.load(weights_only=True) only
    module = restored.model.float().to(device)
    runner = torch_runner(module, device)
    recipe = restored.recipe
    return Loaded(runner, recipe.preprocess, recipe.classes, "checkpoint", artifact, device, module)


def _model_in(folder: Path) -> Path:
    """The model a folder holds: itself (a Triton model folder), its one Triton model, or its model file."""
    if (folder / "config.pbtxt").is_file():
        return folder
    models = [d for d in sorted(folder.iterdir()) if (d / "config.pbtxt").is_file()]
    if len(models) == 1:  # a Triton repository holding one model
        return models[0]
    if models:
        raise ArtifactError(
            f"{folder}: a Triton repository with {len(models)} models; pass one of "
            f"{', '.join(str(m) for m in models[:5])}"
        )
    for name in MODEL_FILES:  # an export folder's one model
        if (folder / name).is_file():
            return folder / name
    raise ArtifactError(f"{folder}: holds no model kiln knows (config.pbtxt, {', '.join(MODEL_FILES)})")
