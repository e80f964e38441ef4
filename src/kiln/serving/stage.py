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


def _model_files(artifact: Path) -> list[Path]:
    """The file and what must travel with it: preprocess.json, a safetensors export's model.json."""
    beside = [
        artifact.parent / n for n in ("preprocess.json", "model.json") if (artifact.parent / n).is_file()
    ]
    up = artifact.parent.parent / "preprocess.json"  # a Triton model folder keeps it one level up
    return [artifact, *beside, *([up] if up.is_file() and not beside else [])]


def stage(model: str | Path, workdir: Path, opts: ExportOptions, trust: bool = False) -> Path:
    """REPO/NAME/{config.pbtxt, labels.txt, 1/model.py, 1/<the model's files>}; returns the repository."""
    loaded = load_any(
        model, trust
    )  # refuses what kiln predict refuses, here and now rather than in the server
    artifact = loaded.path
    if artifact.is_dir():  # a Triton model folder
        cfg = parse_config(artifact / "config.pbtxt")
        if cfg.backend == "python":
            return artifact.parent  # already a repository kiln's model.py serves
        artifact = check_model_dir(artifact, run_probe=False).model_file  # its TorchScript or ONNX file
    version = workdir / model_name(opts.name or "model") / "1"
    version.mkdir(parents=True, exist_ok=True)
    for f in _model_files(artifact):
        shutil.copy2(f, version / f.name)
    if not (version / "preprocess.json").is_file():  # a checkpoint carries its own; Triton folders one up
        (version / "preprocess.json").write_text(json.dumps({**loaded.preprocess, "classes": loaded.classes}))
    shutil.copyfile(Path(triton_python.__file__).with_name("triton_model.py"), version / "model.py")
    model_dir = version.parent
    (model_dir / triton_python.LABELS).write_text("".join(f"{c}\n" for c in loaded.classes))
    in_shape = [int(loaded.preprocess["in_channels"]), *map(int, loaded.preprocess["image_size"])]
    text = triton_python.config_text(model_dir.name, in_shape, len(loaded.classes), opts, artifact.name)
    if trust:
        text += 'parameters: {\n  key: "trust"\n  value: { string_value: "true" }\n}\n'
    (model_dir / "config.pbtxt").write_text(text)
    return workdir
