"""Every export format, one module each, registered by name with ``kiln.registry.register_format``:

- ``torchscript``  ``model.pt`` via ``torch.jit.trace`` or ``torch.jit.script`` (``torchscript.py``)
- ``export``       ``model.pt2``, a ``torch.export`` program with a dynamic batch dimension (``pt2.py``)
- ``onnx``         ``model.onnx``, one self-contained file, dynamic batch (``onnx.py``)
- ``triton``       a Triton model repository around a TorchScript or ONNX file, or kiln's model.py
- ``safetensors``  weights only plus a JSON recipe to rebuild the model: the safe way to share

The modules are imported (and so registered) on the first ``get_format``: they import torch, and the
Triton check imports the ONNX and TorchScript formats, which must not need this package's own import to
finish first. `kiln export --help` lists the formats from its own text, which a test keeps equal to
``FORMATS.names()``.
"""

from __future__ import annotations

from kiln.export import ExportError
from kiln.export.base import Format
from kiln.registry import FORMATS


def register_builtin() -> None:
    """Import kiln's format modules: each registers its Format class by name."""
    from kiln.export.formats import onnx, pt2, safetensors, torchscript, triton  # noqa: F401


def get_format(name: str) -> Format:
    """The format registered as ``name``; an unknown name is one line with the closest valid one."""
    register_builtin()
    kind = FORMATS.get(name)  # "unknown export format 'onx' — did you mean 'onnx'?" (or module:Class)
    if not (isinstance(kind, type) and issubclass(kind, Format)):
        raise ExportError(f"--format {name[:100]!r}: not a kiln export Format class")
    return kind()


def all_formats() -> list[Format]:
    """One of each registered format, in name order (``kiln predict`` asks each whether a path is its)."""
    register_builtin()
    return [get_format(name) for name in FORMATS.names()]
