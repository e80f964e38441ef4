"""`kiln export` as a command: what it prints, what it writes, and its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from tests.export import trained

pytestmark = pytest.mark.slow  # trains models, exports them, runs the command


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-runs"


def test_export_prints_the_check_and_writes_the_report(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = trained("mlp", base)
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--format",
                "onnx",
                "--out",
                str(tmp_path),
                "--max-batch-size",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"kiln: exported mlp as onnx -> {tmp_path / 'model.onnx'}" in out
    assert "checked on 8 images from digits test split" in out
    assert "batch-8" in out
    assert ": OK" in out
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["passed"]
    assert report["loaded_by"]["loader"].startswith("onnxruntime")


def test_exit_codes(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(trained("gated", base))
    # refused trace: a KilnError, one line, exit 2
    assert main(["export", "--checkpoint", ckpt, "--format", "torchscript", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kiln: error: tracing GatedNet hit data-dependent Python")
    assert "\n" not in err
    # the artifact computes something else than the model: exit 4, and by how much
    code = main(
        [
            "export",
            "--checkpoint",
            ckpt,
            "--format",
            "torchscript",
            "--out",
            str(tmp_path),
            "--allow-tracer-warnings",
            "--max-batch-size",
            "4",
        ]
    )
    err = capsys.readouterr().err
    assert code == 4
    assert "verification failed on the 'inverted' batch" in err
    assert "max abs diff" in err
    # bad arguments are the user's to fix, too
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--format", "onnx"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_help_explains_trace_versus_script(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "frozen to the branch the example took, silently" in text
    assert "keeps data-dependent control flow, but accepts only a typed subset of Python" in text
