"""The check of a Triton model folder, as kiln writes it (or by hand, in the same layout).

config.pbtxt is parsed with protobuf's text format into Triton's own ``ModelConfig`` message (tritonclient's
copy of model_config.proto), so a misspelt field is caught as Triton would catch it; then names, types and
shapes are compared with the model file itself: the mistakes that make Triton fail at load time or, worse,
at the first request. A python-backend folder is checked for what kiln's model.py needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.export import ArtifactError
from kiln.export.base import Runner, torch_runner
from kiln.export.triton.repository import BACKENDS, IMAGE, INPUT, LABELS, LABELS_OUTPUT, LOGITS


class TritonConfigError(ArtifactError):
    pass


Complaint = Callable[[str], TritonConfigError]  # a message -> the error naming config.pbtxt


@dataclass
class TritonModel:
    model_dir: Path
    model_file: Path
    backend: str  # torchscript | onnx
    config: Any  # tritonclient's ModelConfig message
    input_name: str
    output_name: str
    in_shape: list[int]  # without the batch dimension
    labels: list[str]  # labels.txt: the display names, in label order


@dataclass
class PythonModel:
    model_dir: Path
    artifact: Path
    config: Any
    labels: list[str]


def parse_config(path: Path) -> Any:
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise TritonConfigError(
            "checking a Triton config needs tritonclient: pip install 'torchkiln[export]' "
            "(tritonclient[grpc], protobuf>=6.33.5,<7)"
        ) from None
    if not path.is_file():
        raise TritonConfigError(f"{path}: missing; a Triton model folder needs config.pbtxt")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise TritonConfigError(f"{path}: not a valid Triton ModelConfig: {e}; fix that line") from None


def _complaint(model_dir: Path) -> Complaint:
    def bad(message: str) -> TritonConfigError:
        return TritonConfigError(f"{model_dir / 'config.pbtxt'}: {message}")

    return bad


def _labels(model_dir: Path, output: Any, num_classes: int, bad: Complaint) -> list[str]:
    """The names of the output's label_filename, one per class."""
    label_filename = output.label_filename
    if not label_filename:
        raise bad(f'output "{output.name}" has no label_filename; kiln writes {LABELS} for class names')
    path = model_dir / label_filename
    if not path.is_file():
        raise bad(f"label_filename {label_filename!r} not found in {model_dir}")
    labels = [line for line in path.read_text().splitlines() if line.strip()]
    if len(labels) != num_classes:
        raise bad(f"output dims [{num_classes}] but {path.name} has {len(labels)} class names")
    return labels


def _backend(cfg: Any, bad: Complaint) -> str:
    by_platform = {v[0]: k for k, v in BACKENDS.items()}
    backend = by_platform.get(cfg.platform) or {"pytorch": "torchscript", "onnxruntime": "onnx"}.get(
        cfg.backend
    )
    if backend is None:
        raise bad(
            f'platform "{cfg.platform}" / backend "{cfg.backend}": kiln writes and checks only '
            f"{' and '.join(by_platform)}"
        )
    return backend


def _model_file(model_dir: Path, cfg: Any, backend: str, bad: Complaint) -> Path:
    versions = sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    filename = cfg.default_model_filename or BACKENDS[backend][1]
    if not versions or not (versions[-1] / filename).is_file():
        raise bad(f"no version folder holds {filename} (expected {model_dir}/1/{filename})")
    return versions[-1] / filename


def _dims(cfg: Any, bad: Complaint) -> tuple[list[int], list[int]]:
    """The input's [C, H, W] and the output's [num_classes], without the batch dimension."""
    from tritonclient.grpc import model_config_pb2

    inp, out = cfg.input[0], cfg.output[0]
    for tensor in (inp, out):
        if tensor.data_type != model_config_pb2.TYPE_FP32:
            name = model_config_pb2.DataType.Name(tensor.data_type)
            raise bad(f'"{tensor.name}": data_type {name}, but the model uses TYPE_FP32')
    in_dims, out_dims = list(inp.dims), list(out.dims)
    if cfg.max_batch_size == 0:  # no Triton batching: the batch dimension must be spelt out (-1)
        if not in_dims or in_dims[0] != -1 or not out_dims or out_dims[0] != -1:
            raise bad("max_batch_size 0: dims must start with -1 for the batch dimension")
        in_dims, out_dims = in_dims[1:], out_dims[1:]
    if any(d <= 0 for d in in_dims) or len(out_dims) != 1 or out_dims[0] <= 0:
        raise bad(
            f"dims {list(inp.dims)} -> {list(out.dims)}: expected [C, H, W] -> [num_classes] "
            f"{'(batch dimension left out since max_batch_size > 0)' if cfg.max_batch_size else ''}"
        )
    return in_dims, out_dims


def check_model_dir(model_dir: Path, run_probe: bool = True) -> TritonModel:
    """Parse and cross-check a libtorch or onnxruntime model folder; raises TritonConfigError naming the
    file and the field that is wrong."""
    model_dir = Path(model_dir)
    cfg, bad = parse_config(model_dir / "config.pbtxt"), _complaint(model_dir)
    if cfg.name and cfg.name != model_dir.name:
        raise bad(
            f'name "{cfg.name}" differs from the folder name "{model_dir.name}"; Triton requires them equal'
        )
    backend = _backend(cfg, bad)
    model_file = _model_file(model_dir, cfg, backend, bad)
    if cfg.max_batch_size < 0:
        raise bad(f"max_batch_size {cfg.max_batch_size} must be >= 0")
    if len(cfg.input) != 1 or len(cfg.output) != 1:
        raise bad(
            f"kiln models take one input and give one output; config lists {len(cfg.input)} input(s) "
            f"and {len(cfg.output)} output(s)"
        )
    in_dims, out_dims = _dims(cfg, bad)
    labels = _labels(model_dir, cfg.output[0], out_dims[0], bad)
    if cfg.instance_group and any(g.count < 1 for g in cfg.instance_group):
        raise bad("instance_group count must be at least 1")
    inp, out = cfg.input[0], cfg.output[0]
    model = TritonModel(model_dir, model_file, backend, cfg, inp.name, out.name, in_dims, labels)
    _check_names_and_shapes(model, bad, run_probe)
    return model


def _check_names_and_shapes(model: TritonModel, bad: Complaint, run_probe: bool) -> None:
    """The config must name the tensors the model file has and give the shapes it computes."""
    if model.backend == "onnx":
        from kiln.export.formats.onnx import io_signature

        sig = io_signature(model.model_file)
        if (model.input_name, model.output_name) != (sig["input"], sig["output"]):
            raise bad(
                f'input/output names "{model.input_name}"/"{model.output_name}" do not match the ONNX '
                f'graph\'s "{sig["input"]}"/"{sig["output"]}" in {model.model_file}'
            )
        graph_in = list(sig["input_shape"][1:])
        if graph_in != model.in_shape:
            raise bad(f"input dims {model.in_shape} differ from the ONNX graph's {graph_in} (batch left out)")
        if isinstance(sig["input_shape"][0], int) and model.config.max_batch_size > 0:
            raise bad(
                f"the ONNX graph's batch dimension is fixed to {sig['input_shape'][0]}, so max_batch_size "
                "must be 0 or the model re-exported with a dynamic batch"
            )
    elif not (re.fullmatch(r".+__\d+", model.input_name) and re.fullmatch(r".+__\d+", model.output_name)):
        # libtorch has no tensor names: Triton maps NAME__<index> to forward() argument / output positions
        raise bad(
            f'TorchScript tensors are named by position: use "INPUT__0" / "OUTPUT__0", '
            f'not "{model.input_name}" / "{model.output_name}"'
        )
    if run_probe:  # run the file once on a batch of 2 zeros: the output must be [2, num_classes]
        runner = load_runner(model)
        try:
            y = runner(np.zeros((2, *model.in_shape), dtype=np.float32))
        except Exception as e:  # torch.jit.Error, onnxruntime's Fail/InvalidArgument...
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise bad(
                f"the model in {model.model_file.name} cannot run on input dims {model.in_shape} "
                f"({first[:200]}); the dims must be the model's [C, H, W]"
            ) from None
        if list(y.shape) != [2, len(model.labels)]:
            raise bad(
                f"the model maps [2, {', '.join(map(str, model.in_shape))}] to {list(y.shape)}, but the "
                f"config declares output dims [{len(model.labels)}]"
            )


def load_runner(model: TritonModel, device: str = "cpu") -> Runner:
    """A callable float32 NCHW -> logits for the model file of a checked Triton folder."""
    if model.backend == "onnx":
        from kiln.export.formats.onnx import Session

        return Session(model.model_file, model.input_name, model.output_name, gpu=device != "cpu")
    from kiln.export.formats.torchscript import load

    return torch_runner(load(model.model_file), device)


def check_python_model_dir(model_dir: Path, cfg: Any) -> PythonModel:
    """A python-backend folder as kiln writes it: the inputs, outputs, labels and artifact model.py needs."""
    from tritonclient.grpc import model_config_pb2

    bad = _complaint(model_dir)
    inputs = {t.name: t for t in cfg.input}
    if set(inputs) != {IMAGE, INPUT} or inputs[IMAGE].data_type != model_config_pb2.TYPE_STRING:
        raise bad(
            f"kiln's model.py takes inputs {IMAGE} (TYPE_STRING) and {INPUT} (TYPE_FP32), both optional"
        )
    outputs = {t.name: t for t in cfg.output}
    if LOGITS not in outputs or not set(outputs) <= {LOGITS, LABELS_OUTPUT}:
        raise bad(
            f'kiln\'s model.py gives the output "{LOGITS}" (and "{LABELS_OUTPUT}" for multi-label models)'
        )
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    artifact = model_dir / "1" / params.get("artifact", "")
    if not params.get("artifact") or not artifact.is_file() or not (model_dir / "1" / "model.py").is_file():
        raise bad(
            f"the version folder {model_dir / '1'} needs model.py and the artifact named in "
            "parameters.artifact"
        )
    out_dims = [d for d in outputs[LOGITS].dims if d != -1]
    labels = _labels(model_dir, outputs[LOGITS], out_dims[0] if out_dims else 0, bad)
    return PythonModel(model_dir, artifact, cfg, labels)
