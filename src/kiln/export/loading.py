"""Loading any kiln model for inference: a checkpoint, or any export file or folder (TorchScript, .pt2,
ONNX, safetensors, a Triton model folder or a repository holding one), with its preprocessing record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.export import ArtifactError
from kiln.export.base import Runner, torch_runner
from kiln.export.program import load_safetensors
from kiln.models.restore import restore


@dataclass
class Loaded:
    run: Runner
    preprocess: dict[str, Any]  # in_channels, image_size [H, W], mean, std
    classes: list[str]
    kind: str
    path: Path
    device: str = "cpu"


def _read_preprocess(artifact: Path) -> dict[str, Any]:
    """preprocess.json in a model folder (Triton), beside a model file, or one folder up."""
    for d in [artifact] if artifact.is_dir() else [artifact.parent, artifact.parent.parent]:
        p = d / "preprocess.json"
        if p.is_file():
            try:
                pre = json.loads(p.read_text())
                _ = (
                    int(pre["in_channels"]),
                    list(pre["image_size"]),
                    list(pre["mean"]),
                    list(pre["std"]),
                    pre["classes"],
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ArtifactError(f"{p}: not a kiln preprocess.json ({type(e).__name__}: {e})") from None
            return pre
    raise ArtifactError(
        f"{artifact}: no preprocess.json beside it; kiln export writes one with the input size, "
        "mean/std and class names. Copy it along with the model"
    )


def load_any(path: str | Path, trust: bool = False, device: str = "cpu") -> Loaded:
    """A runner on ``device`` for a kiln checkpoint, any kiln export file or folder (TorchScript, .pt2, ONNX,
    safetensors, a Triton model folder or a repository holding one model)."""
    from kiln.export.formats import FORMATS

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"--model {p}: no such file or folder")
    if p.is_dir():
        p = _model_in(p)
    for form in FORMATS.values():
        if form.claims(p):
            if form.name == "safetensors":  # the recipe beside the weights has the preprocessing
                model, recipe = load_safetensors(p)
                return Loaded(
                    torch_runner(model, device),
                    dict(recipe["preprocess"]),
                    list(recipe["classes"]),
                    form.name,
                    p,
                    device,
                )
            run = form.load(p, trust, device)
            pre = _read_preprocess(p)
            return Loaded(run, pre, list(pre["classes"]), form.name, p, device)
    r = restore(p, key="--model")  # a kiln checkpoint: torch.load(weights_only=True) only
    return Loaded(
        torch_runner(r.model.float(), device),
        r.preprocess.to_json(),
        list(r.classes),
        "checkpoint",
        p,
        device,
    )


def _model_in(p: Path) -> Path:
    """The model a folder holds: itself (a Triton model folder), its one Triton model, or its model file."""
    if (p / "config.pbtxt").is_file():
        return p
    models = [d for d in sorted(p.iterdir()) if (d / "config.pbtxt").is_file()]
    if len(models) == 1:  # a Triton repository holding one model
        return models[0]
    if models:
        raise ArtifactError(
            f"{p}: a Triton repository with {len(models)} models; pass one of "
            f"{', '.join(str(m) for m in models[:5])}"
        )
    for stem in ("model.safetensors", "model.onnx", "model.pt", "model.pt2"):  # an export folder's one model
        if (p / stem).is_file():
            return p / stem
    raise ArtifactError(
        f"{p}: holds no model kiln knows (config.pbtxt, model.safetensors, model.onnx, model.pt, model.pt2)"
    )
