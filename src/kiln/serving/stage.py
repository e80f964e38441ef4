"""A Triton python-backend repository for any kiln model, for ``kiln serve --model``: the checkpoint or
export is copied (not converted: ``model.py`` loads whatever ``kiln predict`` loads) beside kiln's
``model.py``, with the labels and the config the server reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kiln.export import triton_python
from kiln.export.base import ExportOptions
from kiln.export.loading import load_any
from kiln.export.triton import check_model_dir, model_name, parse_config


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
    # the preprocessing as load_any found it (beside the file, a folder up, or in the checkpoint)
    (version / "preprocess.json").write_text(json.dumps({**loaded.preprocess, "classes": loaded.classes}))
    in_shape = [int(loaded.preprocess["in_channels"]), *map(int, loaded.preprocess["image_size"])]
    triton_python.write_model_dir(version.parent, loaded.classes, in_shape, opts, artifact.name, trust)
    return workdir
