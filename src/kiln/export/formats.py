"""Every export format by name (the names are ``kiln.export.FORMAT_NAMES``, which the CLI lists without
importing this module)."""

from __future__ import annotations

from kiln.export import FORMAT_NAMES, ExportError
from kiln.export.base import Format
from kiln.export.onnx import Onnx
from kiln.export.program import Pt2, Safetensors
from kiln.export.torchscript import TorchScript
from kiln.export.triton_format import Triton

FORMATS: dict[str, Format] = {f.name: f for f in (TorchScript(), Pt2(), Onnx(), Triton(), Safetensors())}
assert tuple(FORMATS) == FORMAT_NAMES  # one list for the CLI, one table here: kept equal


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ExportError(f"--format {name!r}: choose one of {', '.join(FORMATS)}")
    return FORMATS[name]
