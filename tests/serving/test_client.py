"""`kiln predict --url` against a real Triton server serving kiln's python-backend repository: the same
JSON and CSV as a local `kiln predict` (a broken file among good ones included), and one clear line when
nothing listens at the URL or the model name is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.cli import main
from kiln.serving.server import free_port

pytest.importorskip("tritonclient.http", reason="tritonclient[http] is the serve extra")
pytestmark = pytest.mark.slow  # a real server, a trained model


@pytest.fixture(scope="module")
def files(photo_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Eleven photos of every size and, third, a file that is no image: two requests of up to 8 files."""
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    photos = [str(f) for f in sorted((photo_model[1] / "val").rglob("*.jpg"))[:11]]
    return [*photos[:2], str(broken), *photos[2:]]


def _predict(command: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    assert main(["predict", *command]) == 0
    return capsys.readouterr()


def test_the_same_results_as_local_predict(
    triton: Any, photo_model: tuple[Path, Path], files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    remote, remote_err = _predict(["--url", f"http://{triton.http_url}", *files, "--topk", "2"], capsys)
    local, _ = _predict(["--model", str(photo_model[0]), *files, "--topk", "2"], capsys)
    remote_rows, local_rows = json.loads(remote), json.loads(local)
    assert [r["path"] for r in remote_rows] == files
    assert [[t["class"] for t in r.get("top", [])] for r in remote_rows] == [
        [t["class"] for t in r.get("top", [])] for r in local_rows
    ]
    got = [t["prob"] for r in remote_rows for t in r.get("top", [])]
    assert np.allclose(got, [t["prob"] for r in local_rows for t in r.get("top", [])], atol=1e-5)
    assert remote_rows[2]["error"].startswith(f"{files[2]}: cannot read image")  # named by its path
    assert remote_err.count("kiln: warning:") == 1


def test_csv_as_local_predict(
    triton: Any, photo_model: tuple[Path, Path], files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://{triton.http_url}"
    remote, _ = _predict(
        ["--url", url, "--name", "photos", *files[:2], "--format", "csv", "--topk", "1"], capsys
    )
    local, _ = _predict(
        ["--model", str(photo_model[0]), *files[:2], "--format", "csv", "--topk", "1"], capsys
    )
    assert remote.splitlines()[0] == local.splitlines()[0] == "path,top1,top1_prob,error"
    assert [line.split(",")[1] for line in remote.splitlines()] == [
        line.split(",")[1] for line in local.splitlines()
    ]


def test_nothing_listening_is_one_line_saying_what_to_start(
    files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["predict", "--url", url, files[0]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: error: no kiln serve / Triton server answers at {url} (")
    assert err.endswith("; start one with kiln serve --model MODEL\n")
    assert err.count("\n") == 1


def test_a_wrong_model_name_lists_the_servers_models(
    triton: Any, files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://{triton.http_url}"
    assert main(["predict", "--url", url, "--name", "fotos", files[0]]) == 2
    err = capsys.readouterr().err
    expected = f"--name 'fotos': no such model at {url}; it serves: photos (choose one with --name)"
    assert err == f"kiln: error: {expected}\n"


def test_explain_is_local_only(
    triton: Any, files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--url", f"http://{triton.http_url}", files[0], "--explain", str(tmp_path)]) == 2
    assert "--explain runs the model here" in capsys.readouterr().err
