"""What a deployment needs beside the weights: the input's preprocessing and what the outputs mean (the
checkpoint's ``kiln.recipe.ModelRecipe``). Every export writes both into ``preprocess.json`` (a safetensors
export its whole recipe into ``model.json``); every format's ``load`` reads them back with ``read_beside``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.errors import ArtifactError, KilnError, clip
from kiln.models.restore import Restored
from kiln.recipe import ClassList
from kiln.spec import Preprocess

RECORD = "preprocess.json"
PREPROCESS_FORMAT = "kiln-preprocess/1"
GEOMETRY = {  # how a decoded image (EXIF orientation applied, RGB or L) becomes the model's input
    "none": "the image as it is (every training image had image_size); kiln predict resizes others to it",
    "squash": "resized to image_size ({s.interpolation}, antialiased), aspect ratio not kept",
    "crop": (
        "shorter side resized to resize_size ({s.interpolation}, antialiased), then the centre image_size"
    ),
}


def short_record(preprocess: Preprocess, classes: ClassList) -> dict[str, Any]:
    """The fields ``read_beside`` needs, for a model kiln stages itself (``kiln serve --model``)."""
    return {"format": PREPROCESS_FORMAT, **preprocess.to_json(), **classes.to_json()}


def preprocess_record(restored: Restored, input_name: str, output_name: str, artifact: str) -> dict[str, Any]:
    """preprocess.json: everything a deployment needs to feed the model what it saw in training and to read
    its outputs, in plain JSON."""
    recipe = restored.recipe
    pre, spec, classes = recipe.preprocess, recipe.preprocess.spec, recipe.classes
    meaning = (
        "logits; sigmoid gives each class's score, and a label is predicted where score >= thresholds[c]"
        if classes.multi_label
        else "logits (unnormalised class scores); softmax gives probabilities"
    )
    return {
        "format": PREPROCESS_FORMAT,
        "artifact": artifact,
        "model": recipe.model,
        "input": {
            "name": input_name,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", *pre.input_shape],
        },
        "output": {
            "name": output_name,
            "dtype": "float32",
            "shape": ["batch", len(classes)],
            "meaning": meaning,
        },
        **pre.to_json(),
        "channel_order": "RGB" if spec.channels == 3 else "L (grayscale, ITU-R 601-2 luma)",
        "geometry": GEOMETRY[spec.resize].format(s=spec),
        "scale": "uint8 0-255 -> float 0-1 (x / 255)",
        "normalize": "(x / 255 - mean[c]) / std[c] per channel",
        **classes.to_json(),
    }


def find_record(artifact: Path) -> Path:
    """preprocess.json in a model folder (Triton), beside a model file, or one folder up (a Triton model's
    version folder)."""
    for folder in [artifact] if artifact.is_dir() else [artifact.parent, artifact.parent.parent]:
        if (folder / RECORD).is_file():
            return folder / RECORD
    raise ArtifactError(
        f"{artifact}: no {RECORD} beside it; kiln export writes one with the input size, mean/std and "
        "class names. Copy it along with the model"
    )


def read_beside(artifact: Path) -> tuple[Preprocess, ClassList]:
    """The preprocessing and classes recorded beside an artifact."""
    path = find_record(artifact)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not a kiln {RECORD} ({type(e).__name__}: {clip(str(e))})") from None
    try:
        preprocess = Preprocess.from_json(record, str(path))
    except KilnError as e:
        raise ArtifactError(str(e)) from None
    return preprocess, ClassList.from_json(record, str(path))
