"""The ``triton`` export format: a Triton model repository around a TorchScript or ONNX file (libtorch or
onnxruntime backends) or around kiln's ``model.py`` running one (python backend); see ``export/triton/``.
The model file inside is written and verified by its own format."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from kiln.export import ArtifactError
from kiln.export.base import ExportOptions, Format, Loaded, Saved, per_batch
from kiln.export.formats.onnx import Onnx
from kiln.export.formats.torchscript import TorchScript
from kiln.export.record import read_beside
from kiln.export.triton.check import check_model_dir, check_python_model_dir, load_runner, parse_config
from kiln.export.triton.repository import (
    ARTIFACTS,
    IMAGE,
    INPUT,
    KINDS,
    LABELS,
    LABELS_OUTPUT,
    LOGITS,
    PYTHON,
    model_name,
    write_python_model,
    write_repository,
)
from kiln.recipe import ClassList, ModelRecipe
from kiln.registry import register_format

INNER = {"torchscript": TorchScript, "onnx": Onnx}  # the model file's own format, by backend or artifact


@register_format("triton")
class Triton(Format):
    name = "triton"
    shares_its_folder = True  # a repository may hold the user's other models: kiln owns REPO/NAME only

    def own_folder(self, out_dir: Path, recipe: ModelRecipe, opts: ExportOptions) -> Path:
        return out_dir / model_name(opts.name or recipe.run_name)

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: ModelRecipe,
        opts: ExportOptions,
    ) -> Saved:
        name = model_name(opts.name or recipe.run_name)
        if opts.triton.backend == PYTHON:
            return self._save_python(model, example, out_dir / name, recipe, opts)
        classes, in_shape = recipe.classes, list(recipe.preprocess.input_shape)
        model_dir, path = write_repository(out_dir, name, in_shape, classes, opts.max_batch_size, opts.triton)
        inner = INNER[opts.triton.backend]().save(
            model, example, path.parent, recipe, replace(opts, name="model")
        )
        # parse config.pbtxt as Triton's ModelConfig and cross-check it against the file (in-process probe)
        checked = check_model_dir(model_dir, run_probe=True)
        inner.notes.append(
            f"config.pbtxt parsed as Triton ModelConfig and checked: {checked.config.platform}, "
            f"max_batch_size {checked.config.max_batch_size}, {checked.input_name} {checked.in_shape} -> "
            f"{checked.output_name} [{len(checked.labels)}], labels {LABELS}"
            + (" (multi-label: thresholds.txt, applied by the client)" if classes.multi_label else "")
        )
        if opts.triton.backend == "onnx":  # the names come from config.pbtxt, as the server reads them
            inner.run = per_batch(load_runner(checked))
            inner.loaded_by["loader"] += ", names from config.pbtxt"
        return replace(
            inner,
            folder=model_dir,
            names=(checked.input_name, checked.output_name),
            details={**inner.details, "backend": opts.triton.backend},
            variant=opts.triton.backend,
        )

    def _save_python(
        self,
        model: nn.Module,
        example: torch.Tensor,
        model_dir: Path,
        recipe: ModelRecipe,
        opts: ExportOptions,
    ) -> Saved:
        """The model folder with the artifact model.py runs, exported and verified by its own format."""
        triton = opts.triton
        if triton.artifact not in ARTIFACTS:
            raise ArtifactError(f"--artifact {triton.artifact!r}: choose one of {', '.join(ARTIFACTS)}")
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        inner = INNER[triton.artifact]().save(
            model, example, model_dir / "1", recipe, replace(opts, name="model")
        )
        classes, in_shape = recipe.classes, list(recipe.preprocess.input_shape)
        write_python_model(
            model_dir, inner.path.name, recipe.preprocess, classes, opts.max_batch_size, triton
        )
        checked = check_python_model_dir(model_dir, parse_config(model_dir / "config.pbtxt"))
        outputs = f"{LOGITS}" + (
            f" and {LABELS_OUTPUT} (JSON: the classes >= threshold)" if classes.multi_label else ""
        )
        inner.notes += [
            f"Triton python backend: model.py runs {inner.path.name} with kiln's preprocessing; inputs "
            f"{IMAGE} (BYTES, encoded images) or {INPUT} (FP32 {in_shape}), output {outputs} with {LABELS}; "
            f"max_batch_size {opts.max_batch_size}, dynamic batching "
            f"{'on' if triton.dynamic_batching and opts.max_batch_size else 'off'}, "
            f"{triton.instances} x {KINDS[triton.instance_kind]}",
            f"config.pbtxt parsed as Triton ModelConfig and checked: backend python, "
            f"max_batch_size {checked.config.max_batch_size}, labels {LABELS}",
        ]
        return replace(
            inner,
            folder=model_dir,
            names=(IMAGE, LOGITS),
            details={**inner.details, "backend": PYTHON, "artifact": triton.artifact},
            variant=PYTHON,
        )

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Loaded:
        cfg = parse_config(path / "config.pbtxt")
        if cfg.backend == PYTHON:  # the artifact model.py runs
            python_model = check_python_model_dir(path, cfg)
            inner = {".pt": TorchScript(), ".onnx": Onnx()}.get(python_model.artifact.suffix)
            if inner is None or not inner.claims(python_model.artifact):
                raise ArtifactError(
                    f"{path}: kiln predict reads python-backend folders whose artifact is TorchScript "
                    f"or ONNX (kiln export writes those); this one runs {python_model.artifact.name}"
                )
            loaded = inner.load(python_model.artifact, trust, device)
            _same_labels(path, python_model.labels, loaded.class_list)
            return replace(loaded, kind=self.name, path=path)
        checked = check_model_dir(path, run_probe=False)  # a broken config is refused here, before any image
        preprocess, classes = read_beside(path)
        _same_labels(path, checked.labels, classes)
        return Loaded(load_runner(checked, device), preprocess, classes, self.name, path, device)

    def claims(self, path: Path) -> bool:
        return path.is_dir() and (path / "config.pbtxt").is_file()


def _same_labels(model_dir: Path, labels: list[str], classes: ClassList) -> None:
    """labels.txt (what Triton answers with) and preprocess.json (what kiln predict shows) must agree."""
    if labels != list(classes.names):
        raise ArtifactError(f"{model_dir}: {LABELS} and preprocess.json list different class names")
