"""ONNX through the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default since torch 2.9),
one self-contained file, batch dimension dynamic, tensors named ``input`` and ``logits``; run in onnxruntime.

Needs the ``export`` extra (onnx, onnxscript for the dynamo exporter, onnxruntime to check and run it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.export import INPUT_NAME, OUTPUT_NAME, ArtifactError, ExportError
from kiln.export.base import ExportOptions, Format, Loaded, Saved, per_batch
from kiln.export.tracing import data_dependent_hint, first_line, quiet_export
from kiln.recipe import ModelRecipe
from kiln.registry import register_format


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f"ONNX needs the '{module}' package: pip install 'torchkiln[export]' "
            "(onnx, onnxscript, onnxruntime)"
        ) from None


def save(model: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    """Write ``model`` to ``path`` as one ONNX file whose first dimension is a named dynamic ``batch``."""
    _need("onnxscript")  # the dynamo exporter imports it lazily and fails deep inside otherwise
    onnx = _need("onnx")
    if example.shape[0] < 2:  # a batch of 1 would be specialised (0/1 are never treated as symbolic)
        raise ExportError("ONNX export needs an example batch of at least 2 images")
    batch = torch.export.Dim("batch", min=1)
    try:
        with quiet_export():
            program = torch.onnx.export(
                model.eval(),
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                verbose=False,
                external_data=False,
            )
    except Exception as e:  # torch.onnx.errors.* and torch.export's UserError / GuardOnDataDependentSymNode
        raise ExportError(
            f"ONNX export of {type(model).__name__} failed: {first_line(e)}{data_dependent_hint(e)}"
        ) from None
    if program is None:
        raise ExportError("torch.onnx.export returned no program (is dynamo=True supported by this torch?)")
    # external_data=False: weights inside the file, so model.onnx is all a server needs (limit: 2 GB)
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(
            f"{path}: {len(external)} weight(s) were written as external data; kiln needs one file"
        )
    onnx.checker.check_model(proto)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return [f"ONNX opset {opset}, ir_version {proto.ir_version}, weights embedded (single file)"]


def io_signature(path: Path) -> dict[str, Any]:
    """Names and shapes (symbolic dims as strings) of the first graph input and output."""
    onnx = _need("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, OSError...
        raise ArtifactError(f"{path}: not a readable ONNX file ({first_line(e)})") from None

    def shape(v: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    inits = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) < 1:
        raise ArtifactError(
            f"{path}: kiln expects one image input and one output, found "
            f"{len(inputs)} input(s) and {len(proto.graph.output)} output(s)"
        )
    i, o = inputs[0], proto.graph.output[0]
    return {
        "input": i.name,
        "input_shape": shape(i),
        "input_type": i.type.tensor_type.elem_type,
        "output": o.name,
        "output_shape": shape(o),
    }


class Session:
    """An onnxruntime session on the CPU: ``runner(x_float32_nchw) -> logits``."""

    def __init__(
        self, path: Path, input_name: str | None = None, output_name: str | None = None, gpu: bool = False
    ) -> None:
        onnxruntime = _need("onnxruntime")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = (
            3  # errors only: ORT's warnings about unused initializers are not the user's
        )
        try:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise ArtifactError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None
        self.input = input_name or self.session.get_inputs()[0].name
        self.output = output_name or self.session.get_outputs()[0].name
        self.version = onnxruntime.__version__

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output], {self.input: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32)


@register_format("onnx")
class Onnx(Format):
    name, suffix = "onnx", ".onnx"

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: ModelRecipe,
        opts: ExportOptions,
    ) -> Saved:
        path = out_dir / f"{opts.name or 'model'}.onnx"
        notes = save(model, example, path)
        runner = Session(path, INPUT_NAME, OUTPUT_NAME)
        return Saved(
            path,
            out_dir,
            per_batch(runner),
            notes,
            (INPUT_NAME, OUTPUT_NAME),
            {"loader": f"onnxruntime {runner.version} (CPUExecutionProvider)"},
        )

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Loaded:
        return self.loaded(Session(path, gpu=device != "cpu"), path, device)
