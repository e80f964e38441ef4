"""A Triton python-backend repository for any kiln model, for ``kiln serve --model``: the checkpoint or
export is copied (not converted: ``model.py`` loads whatever ``kiln predict`` loads) beside kiln's
``model.py``, with the labels (display names), the thresholds of a multi-label model and the config the
server reads."""

from __future__ import annotations

import shutil
from pathlib import Path

from kiln.export.base import ExportOptions
from kiln.export.triton.check import check_model_dir, parse_config
from kiln.export.triton.repository import model_name, write_python_model
from kiln.inference.loading import load_any


def stage(model: str | Path, workdir: Path, opts: ExportOptions, trust: bool = False) -> Path:
    """REPO/NAME/{config.pbtxt, labels.txt, 1/model.py, 1/<the model's files>}; returns the repository."""
    # refuses what kiln predict refuses, here and now rather than in the server
    loaded = load_any(model, trust)
    artifact = loaded.path
    if artifact.is_dir():  # a Triton model folder
        cfg = parse_config(artifact / "config.pbtxt")
        if cfg.backend == "python":
            return artifact.parent  # already a repository kiln's model.py serves
        artifact = check_model_dir(artifact, run_probe=False).model_file  # its TorchScript or ONNX file
    version = workdir / model_name(opts.name or "model") / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(artifact, version / artifact.name)
    if (artifact.parent / "model.json").is_file():  # a safetensors export: the recipe beside the weights
        shutil.copy2(artifact.parent / "model.json", version / "model.json")
    # the preprocessing and classes as load_any found them (beside the file, a folder up, in the checkpoint)
    write_python_model(
        version.parent,
        artifact.name,
        loaded.preprocess,
        loaded.class_list,
        opts.max_batch_size,
        opts.triton,
        trust,
    )
    return workdir
