"""``Classifier``: a loaded model and its preprocessing, the one inference path that ``kiln predict``,
Triton's python backend (the ``model.py`` kiln writes) and ``kiln serve`` all run. Encoded image files (or
paths) are decoded as training's cache decodes them and cut to the evaluation's view; ready tensors
(already normalised) go to the model as they are.

``answers`` turns logits into what predict prints and serve returns, as training's evaluation reads them:
softmax probabilities for one class per image; for multi-label models each class's sigmoid score, and
the labels whose score is at or above their threshold (``metrics.Outputs``' rule).
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.config import AugmentConfig
from kiln.data import eval_batch
from kiln.data.augment import BatchTransform
from kiln.data.decode import open_image
from kiln.export import ArtifactError
from kiln.export.base import Loaded
from kiln.inference.loading import load_any
from kiln.recipe import ClassList


class Classifier:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded, self.class_list = loaded, loaded.class_list
        self.classes = list(loaded.classes)
        spec = loaded.preprocess.spec
        if spec.resize == "none":  # trained on images of one size: any other file is resized to it
            spec = replace(spec, resize="squash")
        self.spec = spec
        # the geometry of training's evaluation and its arithmetic: decode as the cache does, then the centre
        pre = loaded.preprocess
        self.transform = BatchTransform(list(pre.mean), list(pre.std), AugmentConfig(), 0, spec=spec)
        self.input_shape = pre.input_shape  # what `logits_of_tensors` takes (normalised floats)
        # forward passes of at most this many images: training's evaluation rule (photos on a CPU run
        # fastest a few at a time, while their activations stay in cache)
        self.batch_size = eval_batch(64, spec, torch.device(loaded.device))

    @classmethod
    def load(cls, path: str | Path, trust: bool = False, device: str = "cpu") -> Classifier:
        return cls(load_any(path, trust, device))

    def decode(self, source: Path | bytes, name: str | None = None) -> np.ndarray:
        """One image file (a path, or its encoded bytes) as stored: uint8 [C, H, W]. Raises a DataError
        naming ``name`` (or the path) when it cannot be read."""
        if isinstance(source, bytes | bytearray):
            return open_image(io.BytesIO(source), self.spec, name=name or "image")[0]
        return open_image(source, self.spec, name=name)[0]

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """The model's normalised input for decoded images (uint8 [B, C, H, W] as ``decode`` gives them)."""
        return self.transform.eval(torch.from_numpy(np.ascontiguousarray(images)))

    def logits(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Logits for decoded images, in forward passes of at most ``batch_size`` (default
        ``self.batch_size``) images."""
        return self._run(self.inputs(images).numpy(), batch_size)

    def logits_of_tensors(self, x: np.ndarray) -> np.ndarray:
        """Logits for model inputs already preprocessed (float32 [B, C, H, W], normalised)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise ArtifactError(f"input of shape {list(x.shape)}; the model takes [batch, {shape}]")
        return self._run(np.ascontiguousarray(x, dtype=np.float32))

    def _run(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        n = batch_size or self.batch_size
        parts = [np.asarray(self.loaded.run(x[i : i + n]), dtype=np.float32) for i in range(0, len(x), n)]
        logits = np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)
        if logits.shape != (len(x), len(self.classes)):
            raise ArtifactError(
                f"{self.loaded.path}: gave outputs of shape {list(logits.shape)} for {len(x)} "
                f"images and {len(self.classes)} classes"
            )
        return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def scores(classes: ClassList, logits: np.ndarray) -> np.ndarray:
    """Softmax probabilities, or (multi-label) each class's sigmoid in float32, as evaluation computes it."""
    if classes.multi_label:
        return torch.from_numpy(np.array(logits, dtype=np.float32)).sigmoid().numpy()  # a writable copy
    return softmax(logits)


def _named(classes: ClassList, index: int, value: float, key: str) -> dict[str, Any]:
    """{"class": display name, "id": id (only where it differs), key: value}."""
    entry: dict[str, Any] = {"class": classes.names[index]}
    if classes.ids[index] != classes.names[index]:
        entry["id"] = classes.ids[index]
    entry[key] = round(float(value), 6)
    return entry


def label_indices(classes: ClassList, row: np.ndarray) -> list[int]:
    """A multi-label row of scores' labels: the classes whose score is >= their threshold, highest first."""
    assert classes.thresholds is not None  # a multi-label ClassList always has them
    cut = np.asarray(classes.thresholds, dtype=row.dtype)  # compared at the scores' precision, as evaluation
    chosen = np.flatnonzero(row >= cut)
    return [int(j) for j in chosen[np.argsort(-row[chosen], kind="stable")]]


def labels_above(classes: ClassList, row: np.ndarray) -> list[dict[str, Any]]:
    """[{"class", "score"}] for ``label_indices``: what predict prints and Triton's LABELS output holds."""
    return [_named(classes, j, row[j], "score") for j in label_indices(classes, row)]


def answers(classes: ClassList, logits: np.ndarray, topk: int) -> list[dict[str, Any]]:
    """One {"top": [{"class", "prob"}, ...]} per row (top-k by probability; multi-label by sigmoid score),
    with "labels": [{"class", "score"}, ...] for a multi-label model."""
    k = max(1, min(topk, len(classes)))
    rows = []
    for row in scores(classes, logits):
        order = np.argsort(-row, kind="stable")[:k]
        answer: dict[str, Any] = {"top": [_named(classes, int(j), row[j], "prob") for j in order]}
        if classes.multi_label:
            answer["labels"] = labels_above(classes, row)
        rows.append(answer)
    return rows
