"""The interface every export format implements, its options, and the one way to run a model on numpy arrays.

A format ``save``s a model (with an example batch) into a folder and says how its file is loaded back for
verification; ``load`` gives the artifact ready to run in-process (``Loaded``: the runner with its
preprocessing and classes) for ``kiln predict`` and serving; ``claims`` tells whether a path given to
``kiln predict`` is one of its artifacts. Formats register themselves by name with
``kiln.registry.register_format`` (``formats/``).
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

from kiln.export.record import read_beside
from kiln.recipe import ClassList, ModelRecipe
from kiln.spec import Preprocess

Runner = Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch -> logits
RunMany = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # named batches -> named logits


@dataclass(frozen=True)
class TritonOptions:
    """How a Triton model folder is written and scheduled (``--format triton`` and ``kiln serve``)."""

    backend: str = "torchscript"  # torchscript (libtorch), onnx (onnxruntime) or python (model.py)
    artifact: str = "torchscript"  # python backend: what model.py runs (torchscript or onnx)
    instance_kind: str = "auto"  # instance_group kind
    instances: int = 1  # instance_group count
    dynamic_batching: bool = True  # group concurrent requests into one batch ...
    queue_delay_us: int = 500  # ... waiting at most this long for more
    execution_env: str | None = None  # python backend: EXECUTION_ENV_PATH (a venv with numpy<2 and kiln)


@dataclass(frozen=True)
class ExportOptions:
    name: str | None = None  # file stem (default "model"); Triton: the model name (default run.name)
    max_batch_size: int = 64  # the largest batch verified; Triton's max_batch_size
    method: str = "trace"  # TorchScript: trace or script
    allow_tracer_warnings: bool = False
    triton: TritonOptions = field(default_factory=TritonOptions)


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
    variant: str = ""  # what kind of this format it is, in a word for the summary line (trace, onnx, ...)


@dataclass
class Loaded:
    """An artifact ready to run in-process, with the preprocessing its input needs and its classes."""

    run: Runner
    preprocess: Preprocess
    class_list: ClassList
    kind: str  # the format's name, or "checkpoint"
    path: Path
    device: str = "cpu"
    module: nn.Module | None = None  # the torch module when kiln rebuilt it (checkpoint, safetensors)

    @property
    def classes(self) -> list[str]:
        return list(self.class_list.ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.class_list.names)

    @property
    def multi_label(self) -> bool:
        return self.class_list.multi_label


class Format(ABC):
    name: ClassVar[str]  # the name it is registered under (--format NAME)
    suffix: ClassVar[str] = ""  # the model file's suffix, for kiln predict
    shares_its_folder: ClassVar[bool] = False  # --out may hold others' files (a Triton repository)

    @abstractmethod
    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: ModelRecipe,
        opts: ExportOptions,
    ) -> Saved:
        """Write ``model`` (what it is: ``recipe``) under ``out_dir``."""

    def own_folder(self, out_dir: Path, recipe: ModelRecipe, opts: ExportOptions) -> Path:
        """The folder this export owns (and checks before anything is written): ``out_dir`` itself, or for
        a format that shares it, its own part of it."""
        return out_dir

    @abstractmethod
    def load(self, path: Path, trust: bool, device: str = "cpu") -> Loaded:
        """The artifact ready to run on ``device`` (``trust``: the user accepts formats that unpickle)."""

    def claims(self, path: Path) -> bool:
        return bool(self.suffix) and path.suffix.lower() == self.suffix

    def loaded(self, run: Runner, path: Path, device: str) -> Loaded:
        """``run`` with the preprocessing and classes recorded beside ``path`` (preprocess.json)."""
        preprocess, classes = read_beside(path)
        return Loaded(run, preprocess, classes, self.name, path, device)


def per_batch(run: Runner) -> RunMany:
    """Adapt a one-batch runner to the named-batches interface of verification."""

    def many(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.asarray(run(batch), dtype=np.float32) for name, batch in inputs.items()}

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
