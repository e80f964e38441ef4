"""Triton model repositories for the python backend: ``NAME/config.pbtxt``, ``NAME/labels.txt``,
``NAME/1/model.py`` (kiln's ``triton_model.py``) and the kiln artifact it runs (``NAME/1/model.pt``,
TorchScript, or ``model.onnx``), with the preprocessing inside the server: clients send encoded image
files (``IMAGE``, BYTES) or ready tensors (``INPUT``) and get ``LOGITS`` plus Triton's classification
extension (top-k with the labels of ``labels.txt``).

This is the repository the Triton server inside the ``nvidia-pytriton`` wheel serves (it has the python
backend only); the libtorch and onnxruntime repositories of ``triton.py`` are for NGC's Triton on GPUs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.export import ArtifactError
from kiln.export.base import ExportOptions, Saved
from kiln.export.triton import KINDS, LABELS, scheduling, write_labels

IMAGE, INPUT, OUTPUT = "IMAGE", "INPUT", "LOGITS"
ARTIFACTS = {"torchscript": "model.pt", "onnx": "model.onnx"}


def config_text(name: str, in_shape: list[int], num_classes: int, opts: ExportOptions, artifact: str) -> str:
    """config.pbtxt; with max_batch_size > 0 Triton adds the batch dimension itself, so dims leave it out."""
    batch = [] if opts.max_batch_size > 0 else [-1]
    env = (
        ""
        if not opts.execution_env
        else f'parameters: {{\n  key: "EXECUTION_ENV_PATH"\n  value: {{ string_value: "{opts.execution_env}" }}\n}}\n'
    )
    return f"""# written by kiln export; Triton python backend (model.py runs the kiln artifact {artifact})
name: "{name}"
backend: "python"
max_batch_size: {opts.max_batch_size}
input [
  {{
    name: "{IMAGE}"
    data_type: TYPE_STRING  # encoded image files (JPEG, PNG, ...), one per row
    dims: [ {", ".join(map(str, [*batch, 1]))} ]
    optional: true
  }},
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32  # or ready tensors, normalised as preprocess.json says
    dims: [ {", ".join(map(str, [*batch, *in_shape]))} ]
    optional: true
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {", ".join(map(str, [*batch, num_classes]))} ]
    label_filename: "{LABELS}"
  }}
]
{scheduling(opts)}parameters: {{
  key: "artifact"
  value: {{ string_value: "{artifact}" }}
}}
{env}"""


def write(model: Any, example: Any, model_dir: Path, recipe: dict[str, Any], opts: ExportOptions) -> Saved:
    """The repository's model folder with the artifact (exported and verified by its own format)."""
    from kiln.export.onnx import Onnx
    from kiln.export.torchscript import TorchScript

    if opts.artifact not in ARTIFACTS:
        raise ArtifactError(f"--artifact {opts.artifact!r}: choose one of {', '.join(ARTIFACTS)}")
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    inner = (TorchScript() if opts.artifact == "torchscript" else Onnx()).save(
        model,
        example,
        version,
        recipe,
        ExportOptions(name="model", method=opts.method, allow_tracer_warnings=opts.allow_tracer_warnings),
    )
    in_shape = [int(recipe["preprocess"]["in_channels"]), *map(int, recipe["preprocess"]["image_size"])]
    write_model_dir(model_dir, recipe["classes"], in_shape, opts, inner.path.name)
    inner.notes.append(
        f"Triton python backend: model.py runs {inner.path.name} with kiln's preprocessing; inputs "
        f"{IMAGE} (BYTES, encoded images) or {INPUT} (FP32 {in_shape}), output {OUTPUT} with {LABELS}; "
        f"max_batch_size {opts.max_batch_size}, dynamic batching "
        f"{'on' if opts.dynamic_batching and opts.max_batch_size else 'off'}, "
        f"{opts.instances} x {KINDS[opts.instance_kind]}"
    )
    return inner


def write_model_dir(
    model_dir: Path,
    classes: list[str],
    in_shape: list[int],
    opts: ExportOptions,
    artifact: str,
    trust: bool = False,
) -> None:
    """Around an artifact already in ``model_dir/1``: model.py, labels.txt and config.pbtxt (``trust``: model.py
    may load an artifact that unpickles, such as .pt2, because the user said so)."""
    write_labels(model_dir, classes)
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), model_dir / "1" / "model.py")
    text = config_text(model_dir.name, in_shape, len(classes), opts, artifact)
    if trust:
        text += 'parameters: {\n  key: "trust"\n  value: { string_value: "true" }\n}\n'
    (model_dir / "config.pbtxt").write_text(text)


@dataclass
class PythonModel:
    model_dir: Path
    artifact: Path
    config: Any
    classes: list[str]


def check(model_dir: Path, cfg: Any) -> PythonModel:
    """A python-backend folder as kiln writes it: the inputs, output, labels and artifact that model.py needs."""
    from tritonclient.grpc import model_config_pb2 as pb

    def bad(msg: str) -> ArtifactError:
        return ArtifactError(f"{model_dir / 'config.pbtxt'}: {msg}")

    inputs = {t.name: t for t in cfg.input}
    if set(inputs) != {IMAGE, INPUT} or inputs[IMAGE].data_type != pb.TYPE_STRING:
        raise bad(
            f"kiln's model.py takes inputs {IMAGE} (TYPE_STRING) and {INPUT} (TYPE_FP32), both optional"
        )
    if len(cfg.output) != 1 or cfg.output[0].name != OUTPUT or not cfg.output[0].label_filename:
        raise bad(f'kiln\'s model.py gives one output "{OUTPUT}" with a label_filename')
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    artifact = model_dir / "1" / params.get("artifact", "")
    if not params.get("artifact") or not artifact.is_file() or not (model_dir / "1" / "model.py").is_file():
        raise bad(
            f"the version folder {model_dir / '1'} needs model.py and the artifact named in parameters.artifact"
        )
    labels = model_dir / cfg.output[0].label_filename
    if not labels.is_file():
        raise bad(f"label_filename {cfg.output[0].label_filename!r} not found in {model_dir}")
    classes = [ln for ln in labels.read_text().splitlines() if ln.strip()]
    out_dims = [d for d in cfg.output[0].dims if d != -1]
    if out_dims != [len(classes)]:
        raise bad(f"output dims {list(cfg.output[0].dims)} but {labels.name} has {len(classes)} class names")
    return PythonModel(model_dir, artifact, cfg, classes)
