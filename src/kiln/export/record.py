"""What a deployment needs beside the weights: the input's preprocessing (``kiln.spec.Preprocess``) and what
the outputs mean (``ClassList``: class ids, display names, whether labels are multi-label, and their
thresholds). Every export writes both into ``preprocess.json`` (a safetensors export also into
``model.json``); every format's ``load`` reads them back with ``read_beside``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import KilnError, brief, clip
from kiln.export import ArtifactError
from kiln.models.restore import Restored
from kiln.spec import Preprocess

RECORD = "preprocess.json"
PREPROCESS_FORMAT = "kiln-preprocess/1"
UNTUNED = 0.5  # a multi-label class's threshold when none was tuned (a checkpoint written mid-training)
GEOMETRY = {  # how a decoded image (EXIF orientation applied, RGB or L) becomes the model's input
    "none": "the image as it is (every training image had image_size); kiln predict resizes others to it",
    "squash": "resized to image_size ({s.interpolation}, antialiased), aspect ratio not kept",
    "crop": (
        "shorter side resized to resize_size ({s.interpolation}, antialiased), then the centre image_size"
    ),
}


@dataclass(frozen=True)
class ClassList:
    """The model's outputs, in label order: class ids, display names (the ids when the run gave none) and,
    for a multi-label model, each class's threshold on its sigmoid score (a label is predicted at >=)."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    multi_label: bool = False
    thresholds: tuple[float, ...] | None = None  # multi-label only: one per class

    def __len__(self) -> int:
        return len(self.ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.ids),
            "class_names": list(self.names),  # what predict, Triton's labels.txt and serve show
            "multi_label": self.multi_label,
            "thresholds": None if self.thresholds is None else list(self.thresholds),
        }

    @classmethod
    def from_json(cls, record: Any, source: str) -> ClassList:
        """Read ``to_json``'s keys back; records written before class names and multi-label models had only
        ``classes``. A damaged record is an error naming ``source``."""
        try:
            ids = record["classes"]
            names = record.get("class_names") or ids
            multi_label = bool(record.get("multi_label", False))
            raw = record.get("thresholds")
            thresholds = None if raw is None else tuple(float(t) for t in raw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(
                f"{source}: not a kiln record of classes ({type(e).__name__}: {clip(str(e))})"
            ) from None
        if not isinstance(ids, list) or not isinstance(names, list) or not ids:
            raise ArtifactError(f"{source}: 'classes' and 'class_names' must be non-empty lists of names")
        if len(names) != len(ids) or (thresholds is not None and len(thresholds) != len(ids)):
            raise ArtifactError(
                f"{source}: {len(ids)} classes but {len(names)} class_names and "
                f"{brief(None if thresholds is None else len(thresholds))} thresholds"
            )
        if multi_label and thresholds is None:
            thresholds = (UNTUNED,) * len(ids)
        return cls(tuple(map(str, ids)), tuple(map(str, names)), multi_label, thresholds)


def classes_of(restored: Restored) -> ClassList:
    """A checkpoint's classes. Multi-label: its labels are 0/1 rows (``data.csv.multi_label`` or a list
    ``label_column``), and training's end tuned ``thresholds`` on val (absent mid-training: 0.5 each)."""
    data = restored.config.data
    thresholds = restored.checkpoint.get("thresholds")
    multi_label = thresholds is not None or (data.source == "csv" and data.csv.multi)
    record = {
        "classes": list(restored.classes),
        "class_names": list(restored.class_names),
        "multi_label": multi_label,
        "thresholds": thresholds,
    }
    return ClassList.from_json(record, "the checkpoint")


def short_record(preprocess: Preprocess, classes: ClassList) -> dict[str, Any]:
    """The fields ``read_beside`` needs, for a model kiln stages itself (``kiln serve --model``)."""
    return {"format": PREPROCESS_FORMAT, **preprocess.to_json(), **classes.to_json()}


def preprocess_record(
    restored: Restored, input_name: str, output_name: str, artifact: str, classes: ClassList
) -> dict[str, Any]:
    """preprocess.json: everything a deployment needs to feed the model what it saw in training and to read
    its outputs, in plain JSON."""
    pre, spec = restored.preprocess, restored.preprocess.spec
    meaning = (
        "logits; sigmoid gives each class's score, and a label is predicted where score >= thresholds[c]"
        if classes.multi_label
        else "logits (unnormalised class scores); softmax gives probabilities"
    )
    return {
        "format": PREPROCESS_FORMAT,
        "artifact": artifact,
        "model": restored.config.model.name,
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
