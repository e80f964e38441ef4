"""Triton Inference Server model repositories: write ``NAME/config.pbtxt``, ``NAME/labels.txt`` and
``NAME/1/model.pt`` (libtorch backend) or ``NAME/1/model.onnx`` (onnxruntime backend), and check one.

The check parses config.pbtxt with protobuf's text format into Triton's own ``ModelConfig`` message
(tritonclient's copy of model_config.proto), so a misspelt field is caught as Triton would catch it, then
compares names, types and shapes with the model file itself: the mistakes that make Triton fail at load time
or, worse, at the first request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.export import INPUT_NAME, OUTPUT_NAME, ArtifactError
from kiln.export.base import ExportOptions, Runner, torch_runner
from kiln.export.onnx import Session, io_signature
from kiln.export.torchscript import load

BACKENDS = {  # backend -> (platform, file in the version folder, input name, output name)
    "torchscript": ("pytorch_libtorch", "model.pt", "INPUT__0", "OUTPUT__0"),
    "onnx": ("onnxruntime_onnx", "model.onnx", INPUT_NAME, OUTPUT_NAME),
}
KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
LABELS = "labels.txt"


class TritonConfigError(ArtifactError):
    pass


def model_name(name: str) -> str:
    """A Triton model name is also a folder name and part of the URL /v2/models/NAME: keep it plain."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return clean


def scheduling(opts: ExportOptions) -> str:
    """config.pbtxt's instance_group and dynamic_batching, the same for every backend."""
    text = f"instance_group [\n  {{\n    count: {opts.instances}\n    kind: {KINDS[opts.instance_kind]}\n  }}\n]\n"
    if opts.max_batch_size > 0 and opts.dynamic_batching:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {opts.queue_delay_us}\n}}\n"
    return text


def write_labels(model_dir: Path, classes: list[str]) -> None:
    """NAME/labels.txt, the output's label_filename: one class name per line, in label order."""
    bad = [c for c in classes if "\n" in c or not c.strip()]
    if bad:
        raise ArtifactError(f"class names {bad[:3]} cannot go into {LABELS} (one name per line)")
    (model_dir / LABELS).write_text("".join(f"{c}\n" for c in classes))


def config_text(name: str, backend: str, in_shape: list[int], num_classes: int, opts: ExportOptions) -> str:
    """config.pbtxt: with max_batch_size > 0 Triton adds the batch dimension itself, so dims leave it out."""
    platform, filename, inp, out = BACKENDS[backend]
    batch_dim = [] if opts.max_batch_size > 0 else [-1]
    dims_in = ", ".join(str(d) for d in batch_dim + list(in_shape))
    dims_out = ", ".join(str(d) for d in [*batch_dim, num_classes])
    fmt = "\n    format: FORMAT_NCHW" if len(in_shape) == 3 else ""
    return f"""# written by kiln export; Triton {platform} backend
name: "{name}"
platform: "{platform}"
max_batch_size: {opts.max_batch_size}
default_model_filename: "{filename}"
input [
  {{
    name: "{inp}"
    data_type: TYPE_FP32{fmt}
    dims: [ {dims_in} ]
  }}
]
output [
  {{
    name: "{out}"
    data_type: TYPE_FP32
    dims: [ {dims_out} ]
    label_filename: "{LABELS}"
  }}
]
{scheduling(opts)}"""


def write_repository(
    repo: Path, name: str, backend: str, in_shape: list[int], classes: list[str], opts: ExportOptions
) -> tuple[Path, Path]:
    """Create REPO/NAME/{config.pbtxt, labels.txt, 1/}; returns (model dir, path the model file goes to)."""
    if backend not in BACKENDS:
        raise ArtifactError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    write_labels(model_dir, classes)
    (model_dir / "config.pbtxt").write_text(config_text(name, backend, in_shape, len(classes), opts))
    return model_dir, model_dir / "1" / BACKENDS[backend][1]


@dataclass
class TritonModel:
    model_dir: Path
    model_file: Path
    backend: str  # torchscript | onnx
    config: Any  # tritonclient's ModelConfig message
    input_name: str
    output_name: str
    in_shape: list[int]  # without the batch dimension
    classes: list[str]


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


def check_model_dir(model_dir: Path, run_probe: bool = True) -> TritonModel:
    """Parse and cross-check a Triton model folder written by kiln (or by hand, in the same layout).

    Raises TritonConfigError naming the file and the field that is wrong."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.pbtxt"
    cfg = parse_config(cfg_path)

    def bad(msg: str) -> TritonConfigError:
        return TritonConfigError(f"{cfg_path}: {msg}")

    if cfg.name and cfg.name != model_dir.name:
        raise bad(
            f'name "{cfg.name}" differs from the folder name "{model_dir.name}"; Triton requires them equal'
        )
    by_platform = {v[0]: k for k, v in BACKENDS.items()}
    backend = by_platform.get(cfg.platform) or {"pytorch": "torchscript", "onnxruntime": "onnx"}.get(
        cfg.backend
    )
    if backend is None:
        raise bad(
            f'platform "{cfg.platform}" / backend "{cfg.backend}": kiln writes and checks only '
            f"{' and '.join(by_platform)}"
        )
    versions = sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    filename = cfg.default_model_filename or BACKENDS[backend][1]
    if not versions or not (versions[-1] / filename).is_file():
        raise bad(f"no version folder holds {filename} (expected {model_dir}/1/{filename})")
    model_file = versions[-1] / filename
    if cfg.max_batch_size < 0:
        raise bad(f"max_batch_size {cfg.max_batch_size} must be >= 0")
    if len(cfg.input) != 1 or len(cfg.output) != 1:
        raise bad(
            f"kiln models take one input and give one output; config lists {len(cfg.input)} input(s) "
            f"and {len(cfg.output)} output(s)"
        )
    from tritonclient.grpc import model_config_pb2 as pb

    inp, out = cfg.input[0], cfg.output[0]
    for t in (inp, out):
        if t.data_type != pb.TYPE_FP32:
            raise bad(f'"{t.name}": data_type {pb.DataType.Name(t.data_type)}, but the model uses TYPE_FP32')
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
    if not out.label_filename:
        raise bad(f'output "{out.name}" has no label_filename; kiln writes {LABELS} for class names')
    label_path = model_dir / out.label_filename
    if not label_path.is_file():
        raise bad(f"label_filename {out.label_filename!r} not found in {model_dir}")
    classes = [ln for ln in label_path.read_text().splitlines() if ln.strip()]
    if len(classes) != out_dims[0]:
        raise bad(f"output dims [{out_dims[0]}] but {label_path.name} has {len(classes)} class names")
    if cfg.instance_group and any(g.count < 1 for g in cfg.instance_group):
        raise bad("instance_group count must be at least 1")
    model = TritonModel(model_dir, model_file, backend, cfg, inp.name, out.name, in_dims, classes)
    _check_names_and_shapes(model, bad, run_probe)
    return model


def _check_names_and_shapes(m: TritonModel, bad: Any, run_probe: bool) -> None:
    """The config must name the tensors the model file has and give the shapes it computes."""
    if m.backend == "onnx":
        sig = io_signature(m.model_file)
        if (m.input_name, m.output_name) != (sig["input"], sig["output"]):
            raise bad(
                f'input/output names "{m.input_name}"/"{m.output_name}" do not match the ONNX graph\'s '
                f'"{sig["input"]}"/"{sig["output"]}" in {m.model_file}'
            )
        graph_in = [d for d in sig["input_shape"][1:]]
        if graph_in != m.in_shape:
            raise bad(f"input dims {m.in_shape} differ from the ONNX graph's {graph_in} (batch left out)")
        if isinstance(sig["input_shape"][0], int) and m.config.max_batch_size > 0:
            raise bad(
                f"the ONNX graph's batch dimension is fixed to {sig['input_shape'][0]}, so max_batch_size "
                "must be 0 or the model re-exported with a dynamic batch"
            )
    elif not (re.fullmatch(r".+__\d+", m.input_name) and re.fullmatch(r".+__\d+", m.output_name)):
        # libtorch has no tensor names: Triton maps NAME__<index> to forward() argument / output positions
        raise bad(
            f'TorchScript tensors are named by position: use "INPUT__0" / "OUTPUT__0", '
            f'not "{m.input_name}" / "{m.output_name}"'
        )
    if run_probe:  # run the file once on a batch of 2 zeros: the output must be [2, num_classes]
        import numpy as np

        runner = load_runner(m)
        try:
            y = runner(np.zeros((2, *m.in_shape), dtype=np.float32))
        except Exception as e:  # torch.jit.Error, onnxruntime's Fail/InvalidArgument...
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise bad(
                f"the model in {m.model_file.name} cannot run on input dims {m.in_shape} ({first[:200]}); "
                "the dims must be the model's [C, H, W]"
            ) from None
        if list(y.shape) != [2, len(m.classes)]:
            raise bad(
                f"the model maps [2, {', '.join(map(str, m.in_shape))}] to {list(y.shape)}, but the config "
                f"declares output dims [{len(m.classes)}]"
            )


def load_runner(m: TritonModel) -> Runner:
    """A callable float32 NCHW -> logits for the model file of a checked Triton folder."""
    if m.backend == "onnx":
        return Session(m.model_file, m.input_name, m.output_name)
    return torch_runner(load(m.model_file))
