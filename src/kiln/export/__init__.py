"""`kiln export`: turn a checkpoint into a deployable artifact and prove it computes what the eager model
computes.

- ``formats/``: one module per format, each a ``base.Format`` subclass registered by name with
  ``kiln.registry.register_format`` (save, load with its records, claims a path); imported only when used,
  so `kiln --help` stays fast:
  ``torchscript`` (model.pt), ``export`` (model.pt2, ``pt2.py``), ``onnx`` (model.onnx), ``triton`` (a
  Triton model repository), ``safetensors`` (weights plus a recipe to rebuild the model with kiln);
- ``triton/``: Triton repositories (one config.pbtxt writer for the libtorch, onnxruntime and python
  backends) and the check of a model folder;
- ``record.py``: preprocess.json, what a deployment needs beside the weights (preprocessing, classes,
  display names, multi-label thresholds);
- ``verify.py``: the check on real images; ``run.py``: ``export_checkpoint``, the whole command.

Running artifacts on image files (``kiln predict``, Triton's python model, ``kiln serve``) is
``kiln.inference``'s: one layer up, it loads any of these formats.
"""

from __future__ import annotations

from kiln.errors import ArtifactError, KilnError  # noqa: F401  (ArtifactError: re-exported)

TOLERANCE = 1e-4  # max abs logit difference allowed between an artifact and the eager fp32 model

# the tensor names written into artifacts (ONNX graph, Triton config, preprocess.json)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ExportError(KilnError):
    """The model cannot be written in the asked format (unsupported op, data-dependent control flow...)."""


class VerificationError(ExportError):
    """The written artifact does not compute what the eager model computes."""

    exit_code = 4
