"""Triton model folders: ``NAME/config.pbtxt`` (one writer for the libtorch, onnxruntime and python
backends), ``NAME/labels.txt`` (the display names, for Triton's classification extension), for multi-label
models ``NAME/thresholds.txt``, and ``NAME/1/`` for the model file.

- libtorch / onnxruntime (NGC's Triton, GPUs): ``1/model.pt`` or ``1/model.onnx`` takes ready tensors;
  a multi-label model's client applies the thresholds (thresholds.txt, preprocess.json) itself.
- python (the Triton server inside the ``nvidia-pytriton`` wheel, ``kiln serve``): ``1/model.py`` runs the
  kiln artifact beside it with kiln's own preprocessing: clients send encoded image files (``IMAGE``,
  BYTES) or ready tensors (``INPUT``) and get ``LOGITS`` plus, for multi-label models, ``LABELS`` (one
  JSON string per image: the classes at or above their threshold, with scores).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from kiln.export import INPUT_NAME, OUTPUT_NAME, ArtifactError
from kiln.export.base import TritonOptions
from kiln.export.record import RECORD, short_record
from kiln.recipe import ClassList
from kiln.spec import Preprocess

BACKENDS = {  # backend -> (platform, file in the version folder, input name, output name)
    "torchscript": ("pytorch_libtorch", "model.pt", "INPUT__0", "OUTPUT__0"),
    "onnx": ("onnxruntime_onnx", "model.onnx", INPUT_NAME, OUTPUT_NAME),
}
PYTHON = "python"
ARTIFACTS = {"torchscript": "model.pt", "onnx": "model.onnx"}  # what the python backend's model.py runs
KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
IMAGE, INPUT, LOGITS, LABELS_OUTPUT = "IMAGE", "INPUT", "LOGITS", "LABELS"  # the python backend's tensors
LABELS, THRESHOLDS = "labels.txt", "thresholds.txt"
CLASSES_PARAMETER = "kiln_classes"  # the python backend's ClassList as JSON, for `kiln predict --url`
# model.py is the serve-time half of kiln's inference (it imports kiln.inference.runtime inside the server);
# export only copies the file by its path, so the export layer imports nothing from the layer above it
MODEL_PY = Path(__file__).resolve().parents[2] / "inference" / "triton_model.py"


def model_name(name: str) -> str:
    """A Triton model name is also a folder name and part of the URL /v2/models/NAME: keep it plain."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


@dataclass(frozen=True)
class TensorConfig:
    """One entry of config.pbtxt's input or output list; ``dims`` without the batch dimension."""

    name: str
    data_type: str
    dims: list[int]
    comment: str = ""
    nchw: bool = False
    label_filename: str | None = None
    optional: bool = False

    def text(self, batch: list[int]) -> str:
        comment = f"  # {self.comment}" if self.comment else ""
        lines = [f'name: "{self.name}"', f"data_type: {self.data_type}{comment}"]
        lines += ["format: FORMAT_NCHW"] if self.nchw else []
        lines.append(f"dims: [ {', '.join(map(str, [*batch, *self.dims]))} ]")
        lines += [f'label_filename: "{self.label_filename}"'] if self.label_filename else []
        lines += ["optional: true"] if self.optional else []
        return "  {\n" + "".join(f"    {line}\n" for line in lines) + "  }"


def _quoted(value: str) -> str:
    """A protobuf text-format string literal's contents (JSON from json.dumps has no raw newlines)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def scheduling(max_batch_size: int, opts: TritonOptions) -> str:
    """config.pbtxt's instance_group and dynamic_batching, the same for every backend."""
    group = f"    count: {opts.instances}\n    kind: {KINDS[opts.instance_kind]}\n"
    text = f"instance_group [\n  {{\n{group}  }}\n]\n"
    if max_batch_size > 0 and opts.dynamic_batching:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {opts.queue_delay_us}\n}}\n"
    return text


def _tensors(
    in_shape: list[int], num_classes: int, opts: TritonOptions, multi_label: bool
) -> tuple[list[TensorConfig], list[TensorConfig]]:
    if opts.backend != PYTHON:
        _, _, input_name, output_name = BACKENDS[opts.backend]
        inputs = [TensorConfig(input_name, "TYPE_FP32", in_shape, nchw=len(in_shape) == 3)]
        return inputs, [TensorConfig(output_name, "TYPE_FP32", [num_classes], label_filename=LABELS)]
    inputs = [
        TensorConfig(
            IMAGE, "TYPE_STRING", [1], "encoded image files (JPEG, PNG, ...), one per row", optional=True
        ),
        TensorConfig(
            INPUT,
            "TYPE_FP32",
            in_shape,
            "or ready tensors, normalised as preprocess.json says",
            optional=True,
        ),
    ]
    outputs = [TensorConfig(LOGITS, "TYPE_FP32", [num_classes], label_filename=LABELS)]
    if multi_label:
        outputs.append(
            TensorConfig(LABELS_OUTPUT, "TYPE_STRING", [1], "JSON per image: classes >= threshold")
        )
    return inputs, outputs


def config_text(
    name: str,
    in_shape: list[int],
    num_classes: int,
    max_batch_size: int,
    opts: TritonOptions,
    artifact: str | None = None,
    multi_label: bool = False,
    parameters: dict[str, str] | None = None,
) -> str:
    """config.pbtxt for ``opts.backend``; with max_batch_size > 0 Triton adds the batch dimension itself, so
    dims leave it out. The python backend runs ``artifact`` (default: the file of ``opts.artifact``)."""
    if opts.backend == PYTHON:
        artifact = artifact or ARTIFACTS[opts.artifact]
        head = (
            f"# written by kiln export; Triton python backend (model.py runs the kiln artifact {artifact})\n"
        )
        head += f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        env = {"EXECUTION_ENV_PATH": opts.execution_env} if opts.execution_env else {}
        parameters = {"artifact": artifact, **env, **(parameters or {})}
    else:
        platform, filename, _, _ = BACKENDS[opts.backend]
        head = (
            f'# written by kiln export; Triton {platform} backend\nname: "{name}"\nplatform: "{platform}"\n'
        )
        head += f'max_batch_size: {max_batch_size}\ndefault_model_filename: "{filename}"\n'
    batch = [] if max_batch_size > 0 else [-1]
    inputs, outputs = _tensors(in_shape, num_classes, opts, multi_label)
    text = head + "input [\n" + ",\n".join(t.text(batch) for t in inputs) + "\n]\n"
    text += (
        "output [\n" + ",\n".join(t.text(batch) for t in outputs) + "\n]\n" + scheduling(max_batch_size, opts)
    )
    for key, value in (parameters or {}).items():
        text += f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{_quoted(value)}" }}\n}}\n'
    return text


def write_labels(model_dir: Path, classes: ClassList) -> None:
    """NAME/labels.txt, the output's label_filename: one display name per line, in label order; and for a
    multi-label model NAME/thresholds.txt, each class's threshold on its sigmoid score, in the same order."""
    bad = [c for c in classes.names if "\n" in c or "\r" in c or not c.strip()]
    if bad:
        raise ArtifactError(f"class names {bad[:3]} cannot go into {LABELS} (one name per line)")
    (model_dir / LABELS).write_text("".join(f"{c}\n" for c in classes.names))
    if classes.multi_label and classes.thresholds is not None:
        (model_dir / THRESHOLDS).write_text("".join(f"{t!r}\n" for t in classes.thresholds))


def write_repository(
    repo: Path, name: str, in_shape: list[int], classes: ClassList, max_batch_size: int, opts: TritonOptions
) -> tuple[Path, Path]:
    """REPO/NAME/{config.pbtxt, labels.txt, 1/} for the libtorch or onnxruntime backend; returns (model dir,
    the path the model file goes to)."""
    if opts.backend not in BACKENDS:
        raise ArtifactError(f"--backend {opts.backend!r}: choose one of {', '.join([*BACKENDS, PYTHON])}")
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    write_labels(model_dir, classes)
    text = config_text(name, in_shape, len(classes), max_batch_size, opts, multi_label=classes.multi_label)
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir, model_dir / "1" / BACKENDS[opts.backend][1]


def write_python_model(
    model_dir: Path,
    artifact: str,
    preprocess: Preprocess,
    classes: ClassList,
    max_batch_size: int,
    opts: TritonOptions,
    trust: bool = False,
) -> None:
    """The one builder of python-backend model folders (``kiln export --backend python`` and ``kiln serve
    --model``): around an artifact already in ``model_dir/1``, model.py with the preprocessing and classes
    it reads (1/preprocess.json), labels.txt and config.pbtxt (``trust``: model.py may load an artifact
    that unpickles, such as .pt2, because the user said so). config.pbtxt carries the classes as JSON, so
    a client (``kiln predict --url``) reads the same names, ids and thresholds as kiln predict."""
    (model_dir / "1" / RECORD).write_text(json.dumps(short_record(preprocess, classes)))
    in_shape = list(preprocess.input_shape)
    write_labels(model_dir, classes)
    shutil.copyfile(MODEL_PY, model_dir / "1" / "model.py")
    parameters = {CLASSES_PARAMETER: json.dumps(classes.to_json())}
    if trust:
        parameters["trust"] = "true"
    python = replace(opts, backend=PYTHON)
    text = config_text(
        model_dir.name,
        in_shape,
        len(classes),
        max_batch_size,
        python,
        artifact,
        classes.multi_label,
        parameters,
    )
    (model_dir / "config.pbtxt").write_text(text)
