"""`kiln export` and `kiln predict`: turn a checkpoint into a deployable artifact, prove it computes what the
eager model computes, and run any of those artifacts on image files.

Formats share one interface (``base.Format``: save, load, verify), registered by name in ``formats.py``,
one module each, imported only when used so `kiln --help` stays fast:

- ``torchscript``  ``model.pt`` via ``torch.jit.trace`` or ``torch.jit.script`` (``torchscript.py``)
- ``export``       ``model.pt2``, a ``torch.export`` program with a dynamic batch dimension (``program.py``)
- ``onnx``         ``model.onnx``, one self-contained file, dynamic batch (``onnx.py``)
- ``triton``       a Triton model repository around a TorchScript or ONNX file (``triton.py``)
- ``safetensors``  weights only plus a JSON recipe to rebuild the model: the safe way to share (``program.py``)

Every export writes ``preprocess.json`` beside the model and is verified (``verify.py``) before success is
reported; the report is printed and saved as ``export.json``.
"""

from __future__ import annotations

from kiln.errors import KilnError

FORMAT_NAMES = ("torchscript", "export", "onnx", "triton", "safetensors")
TOLERANCE = 1e-4  # max abs logit difference allowed between an artifact and the eager fp32 model

# the tensor names written into artifacts (ONNX graph, Triton config, preprocess.json)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ExportError(KilnError):
    """The model cannot be written in the asked format (unsupported op, data-dependent control flow...)."""


class VerificationError(ExportError):
    """The written artifact does not compute what the eager model computes."""

    exit_code = 4


class ArtifactError(KilnError):
    """A file given to `kiln predict` (or a Triton config) is not a usable model."""
