"""`kiln export --help` and --format: the help text lists exactly the registered formats (it cannot take
them from the registry, which needs torch), and an unknown name gets the registry's one-line error."""

from __future__ import annotations

import re

import pytest

from kiln.cli import main
from kiln.export.formats import register_builtin
from kiln.registry import FORMATS


def _help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    return capsys.readouterr().out


def test_the_help_text_describes_every_registered_format(capsys: pytest.CaptureFixture[str]) -> None:
    register_builtin()
    section = _help(capsys).split("formats (--format", 1)[1].split("\noptions:", 1)[0]
    described = re.findall(r"^  (\w+) {2,}", section, flags=re.MULTILINE)  # "  onnx         model.onnx..."
    assert sorted(described) == FORMATS.names()


def test_an_unknown_format_is_one_line_with_the_closest_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--checkpoint", "none.pt", "--format", "onx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: --format: unknown export format 'onx' — did you mean 'onnx'?")
    assert err.count("\n") == 1
