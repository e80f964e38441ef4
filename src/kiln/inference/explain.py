"""``kiln predict --explain OUT_DIR``: where in each image the evidence for its class is, as a Grad-CAM
overlay (``kiln.models.gradcam``: HiResCAM maps, the feature map found by itself) on the model's view of
the image, one PNG per image and explained class: ``OUT_DIR/<stem>-<class>.png``.

The class explained is the predicted one; for a multi-label model, each label at or above its threshold
gets its own overlay (the top-scoring class when none is). Every (image, class) pair of a predict batch
goes through ONE batched forward and backward pass: rows do not interact in eval mode, so a map is the
same in a batch as alone. Grad-CAM needs the torch module, which kiln has for a checkpoint and for a
safetensors export (rebuilt from model.json); TorchScript, ONNX, .pt2 and Triton files run outside
autograd here and are refused in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.inference.runtime import Classifier, label_indices, scores
from kiln.models.gradcam import gradcam, overlay, write_png

EXPLAINABLE = "a kiln checkpoint or a safetensors export (model.safetensors + model.json)"


class Explainer:
    """Writes the overlays of each predict batch into ``out_dir`` (checked by ``paths.output_dir``)."""

    def __init__(self, classifier: Classifier, out_dir: Path) -> None:
        loaded = classifier.loaded
        if loaded.module is None:
            raise KilnError(
                f"--explain needs the model as a torch module: {EXPLAINABLE}; {loaded.path} is a "
                f"{loaded.kind} artifact. Pass its checkpoint, or export it with --format safetensors"
            )
        self.classifier, self.module, self.out_dir = classifier, loaded.module, out_dir
        self.device = torch.device(loaded.device)
        # refused before any image when the model has no spatial feature map (an MLP): ConfigError, one line
        gradcam(self.module, torch.zeros((1, *classifier.input_shape), device=self.device))
        self.used: set[str] = set()  # file names written in this run, lower-cased: no two images share one

    def targets(self, logits: np.ndarray) -> list[list[int]]:
        """The classes explained for each image: its predicted class, or its labels (multi-label)."""
        classes = self.classifier.class_list
        if not classes.multi_label:
            return [[int(row.argmax())] for row in logits]
        return [label_indices(classes, row) or [int(row.argmax())] for row in scores(classes, logits)]

    def explain(self, paths: list[Path], images: np.ndarray, logits: np.ndarray) -> list[list[Path]]:
        """Overlays for decoded images (uint8 [B, C, H, W]) and their logits; the files written, per image."""
        targets = self.targets(logits)
        owners = [i for i, classes in enumerate(targets) for _ in classes]  # the image of each pair
        pairs = [c for classes in targets for c in classes]
        x = self.classifier.inputs(images)[owners].to(self.device)
        heatmaps = gradcam(self.module, x, torch.tensor(pairs, device=self.device)).cpu().numpy()
        # what the model saw: the evaluation's view of the stored image (photos: the centre crop), HWC
        views = self.classifier.transform.eval_view(torch.from_numpy(images)).permute(0, 2, 3, 1).numpy()
        written: list[list[Path]] = [[] for _ in paths]
        for heatmap, owner, class_index in zip(heatmaps, owners, pairs, strict=True):
            target = self.out_dir / self._file_name(paths[owner], class_index)
            written[owner].append(write_png(target, overlay(views[owner], heatmap)))
        return written

    def _file_name(self, image: Path, class_index: int) -> str:
        """``<stem>-<class>.png``; a stem seen before (a/x.png, b/x.png) gets a number: ``x-2-cat.png``."""
        name = self.classifier.class_list.names[class_index]
        label = re.sub(r"[^\w.-]+", "_", name).strip("._")[:60] or f"class{class_index}"
        stem = image.stem[:100]
        candidate, number = f"{stem}-{label}.png", 2
        while candidate.lower() in self.used:
            candidate, number = f"{stem}-{number}-{label}.png", number + 1
        self.used.add(candidate.lower())
        return candidate
