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
    backend: str = "torchscript"  # Triton: torchscript (libtorch), onnx (onnxruntime) or python (model.py)
    artifact: str = "torchscript"  # Triton python backend: what model.py runs (torchscript or onnx)
    instance_kind: str = "auto"  # Triton: instance_group kind
    instances: int = 1  # Triton: instance_group count
    dynamic_batching: bool = True  # Triton: group concurrent requests into one batch ...
    queue_delay_us: int = 500  # ... waiting at most this long for more
    execution_env: str | None = (
        None  # Triton python backend: EXECUTION_ENV_PATH (a venv with numpy<2 and kiln)
    )
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
    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: dict[str, Any],
        opts: ExportOptions,
    ) -> Saved:
        """Write ``model``; ``recipe`` holds model name/args, classes, preprocess and the run name."""

    @abstractmethod
    def load(self, path: Path, trust: bool, device: str = "cpu") -> Runner:
        """The artifact as an in-process runner on ``device`` (``trust``: the user accepts formats that
        unpickle)."""

    def claims(self, path: Path) -> bool:
        return bool(self.suffix) and path.suffix.lower() == self.suffix


def per_batch(run: Runner) -> RunMany:
    """Adapt a one-batch runner to the named-batches interface of verification."""

    def many(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(run(v), dtype=np.float32) for k, v in inputs.items()}

    return many


def torch_runner(module: Callable[[torch.Tensor], torch.Tensor], device: str = "cpu") -> Runner:
    """A torch module (eager, TorchScript, torch.export) as a numpy -> numpy runner on ``device``, without
    autograd."""
    if device != "cpu" and isinstance(module, torch.nn.Module):
        module = module.to(device)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
            return out.float().cpu().numpy()

    return run
