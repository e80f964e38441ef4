"""The ``triton`` export format: a Triton model repository around a TorchScript or ONNX file (libtorch or
onnxruntime backends, ``triton.py``) or around kiln's ``model.py`` (python backend, ``triton_python.py``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.export import ArtifactError, triton_python
from kiln.export.base import ExportOptions, Format, Runner, Saved, per_batch
from kiln.export.onnx import Onnx
from kiln.export.torchscript import TorchScript
from kiln.export.triton import (
    LABELS,
    check_model_dir,
    load_runner,
    model_name,
    parse_config,
    write_repository,
)


class Triton(Format):
    name = "triton"

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: dict[str, Any],
        opts: ExportOptions,
    ) -> Saved:
        if opts.backend == "python":
            return self._save_python(
                model, example, out_dir / model_name(opts.name or recipe["run_name"]), recipe, opts
            )
        in_shape = [int(recipe["preprocess"]["in_channels"]), *map(int, recipe["preprocess"]["image_size"])]
        model_dir, path = write_repository(
            out_dir,
            model_name(opts.name or recipe["run_name"]),
            opts.backend,
            in_shape,
            recipe["classes"],
            opts,
        )
        inner_format = TorchScript() if opts.backend == "torchscript" else Onnx()
        inner = inner_format.save(model, example, path.parent, recipe, replace(opts, name="model"))
        # parse config.pbtxt as Triton's ModelConfig and cross-check it against the file (in-process probe)
        m = check_model_dir(model_dir, run_probe=True)
        inner.notes.append(
            f"config.pbtxt parsed as Triton ModelConfig and checked: {m.config.platform}, "
            f"max_batch_size {m.config.max_batch_size}, {m.input_name} {m.in_shape} -> {m.output_name} "
            f"[{len(m.classes)}], labels {LABELS}"
        )
        if opts.backend == "onnx":  # the names come from config.pbtxt, as the server reads them
            inner.run = per_batch(load_runner(m))
            inner.loaded_by["loader"] += ", names from config.pbtxt"
        return replace(
            inner,
            folder=model_dir,
            names=(m.input_name, m.output_name),
            details={**inner.details, "backend": opts.backend},
        )

    def _save_python(
        self,
        model: nn.Module,
        example: torch.Tensor,
        model_dir: Path,
        recipe: dict[str, Any],
        opts: ExportOptions,
    ) -> Saved:
        saved = triton_python.write(
            model, example, model_dir, recipe, opts
        )  # checked as its format checks it
        pm = triton_python.check(model_dir, parse_config(model_dir / "config.pbtxt"))
        saved.notes.append(
            f"config.pbtxt parsed as Triton ModelConfig and checked: backend python, "
            f"max_batch_size {pm.config.max_batch_size}, labels {LABELS}"
        )
        return replace(
            saved,
            folder=model_dir,
            names=(triton_python.INPUT, triton_python.OUTPUT),
            details={**saved.details, "backend": "python", "artifact": opts.artifact},
        )

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Runner:
        cfg = parse_config(path / "config.pbtxt")
        if cfg.backend == "python":  # the artifact model.py runs
            pm = triton_python.check(path, cfg)
            self._same_classes(path, pm.classes, cfg.output[0].label_filename)
            inner = {".pt": TorchScript(), ".onnx": Onnx()}.get(pm.artifact.suffix)
            if inner is None or not inner.claims(pm.artifact):
                raise ArtifactError(
                    f"{path}: kiln predict reads python-backend folders whose artifact is TorchScript "
                    f"or ONNX (kiln export writes those); this one runs {pm.artifact.name}"
                )
            return inner.load(pm.artifact, trust, device)
        m = check_model_dir(path, run_probe=False)  # a broken config is refused here, before any image
        self._same_classes(path, m.classes, m.config.output[0].label_filename)
        return load_runner(m)

    @staticmethod
    def _same_classes(path: Path, classes: list[str], label_file: str) -> None:
        pre = path / "preprocess.json"
        try:
            listed = json.loads(pre.read_text()).get("classes") if pre.is_file() else classes
        except (OSError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{pre}: not a kiln preprocess.json ({e}); export the model again") from None
        if listed != classes:
            raise ArtifactError(f"{path}: {label_file} and preprocess.json list different classes")

    def claims(self, path: Path) -> bool:
        return path.is_dir() and (path / "config.pbtxt").is_file()
