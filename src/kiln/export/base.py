"""The interface every export format implements, and the one way to run a model on numpy arrays.

A format ``save``s a model (with an example batch) into a folder and says how its file is loaded back for
verification; ``load`` gives an in-process runner for ``kiln predict`` and serving; ``claims`` tells whether
a path given to ``kiln predict`` is one of its artifacts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

Runner = Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch -> logits
RunMany = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # named batches -> named logits


@dataclass(frozen=True)
class ExportOptions:
    name: str | None = None  # file stem (default "model"); Triton: the model name (default run.name)
    max_batch_size: int = 64  # the largest batch verified; Triton's max_batch_size
    method: str = "trace"  # TorchScript: trace or script
    backend: str = "torchscript"  # Triton: the model file inside the repository
    instance_kind: str = "auto"  # Triton: instance_group kind
    allow_tracer_warnings: bool = False


@dataclass
class Saved:
    """What a format wrote, and how verification runs it."""

    path: Path  # the model file
    folder: Path  # where preprocess.json and export.json go beside it
    run: RunMany  # the artifact, loaded back as a deployment would, run on named batches
    notes: list[str] = field(default_factory=list)
    names: tuple[str, str] = ("input", "logits")  # input and output tensor names, for preprocess.json
    loaded_by: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # format-specific report fields (method, backend)


class Format(ABC):
    name: ClassVar[str]
    suffix: ClassVar[str] = ""  # the model file's suffix, for kiln predict

    @abstractmethod
    def save(self, model: nn.Module, example: torch.Tensor, out_dir: Path, recipe: dict[str, Any],
             opts: ExportOptions) -> Saved:  # fmt: skip
        """Write ``model``; ``recipe`` holds model name/args, classes, preprocess and the run name."""

    @abstractmethod
    def load(self, path: Path, trust: bool) -> Runner:
        """The artifact as an in-process runner (``trust``: the user accepts formats that unpickle)."""

    def claims(self, path: Path) -> bool:
        return bool(self.suffix) and path.suffix.lower() == self.suffix


def per_batch(run: Runner) -> RunMany:
    """Adapt a one-batch runner to the named-batches interface of verification."""

    def many(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(run(v), dtype=np.float32) for k, v in inputs.items()}

    return many


def torch_runner(module: Callable[[torch.Tensor], torch.Tensor]) -> Runner:
    """A torch module (eager, TorchScript, torch.export) as a numpy -> numpy runner, without autograd."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    return run
