"""``Classifier``: a loaded model and its preprocessing, the one inference path that ``kiln predict``,
Triton's python backend (the ``model.py`` kiln writes) and ``kiln serve`` all run. Encoded image files (or
paths) are decoded as training's cache decodes them and cut to the evaluation's view; ready tensors
(already normalised) go to the model as they are.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kiln.config import AugmentConfig
from kiln.data import Preprocess, eval_batch
from kiln.data.augment import BatchTransform
from kiln.data.decode import open_image
from kiln.export import ArtifactError
from kiln.export.loading import Loaded, load_any


class Classifier:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded, self.classes = loaded, list(loaded.classes)
        pre = Preprocess.from_json(loaded.preprocess, f"{loaded.path} (its preprocessing record)")
        spec = pre.spec
        if spec.resize == "none":  # trained on images of one size: any other file is resized to it
            spec = replace(spec, resize="squash")
        self.spec = spec
        # the geometry of training's evaluation and its arithmetic: decode as the cache does, then the centre
        self.transform = BatchTransform(list(pre.mean), list(pre.std), AugmentConfig(), 0, spec=spec)
        self.input_shape = (spec.channels, *spec.size)  # what `logits_of_tensors` takes (normalised floats)
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

    def logits(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Logits for decoded images (uint8 [B, C, H, W] as ``decode`` gives them), in forward passes of at
        most ``batch_size`` (default ``self.batch_size``) images."""
        x = self.transform.eval(torch.from_numpy(np.ascontiguousarray(images)))
        return self._run(x.numpy(), batch_size)

    def logits_of_tensors(self, x: np.ndarray) -> np.ndarray:
        """Logits for model inputs already preprocessed (float32 [B, C, H, W], normalised)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ArtifactError(
                f"input of shape {list(x.shape)}; the model takes [batch, {', '.join(map(str, self.input_shape))}]"
            )
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
