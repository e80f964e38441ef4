"""A multi-label model behind a real `kiln serve`: its LABELS output over HTTP gives the labels (display
names, scores) a local `kiln predict` gives, `kiln predict --url` prints them, and Triton's classification
extension answers with the display names of labels.txt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.cli import main
from kiln.inference.predict import load_any, predict
from kiln.serving.server import free_port, ready
from tests.export import trained_multilabel

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is the serve extra")
pytestmark = pytest.mark.slow  # a real server, real photos, real training


@pytest.fixture(scope="module")
def checkpoint(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_multilabel(cifar10_dir, tmp_path_factory.getbasetemp() / "export-runs")


def _labels(results: list[dict[str, Any]]) -> list[list[str]]:
    return [[label["class"] for label in r["labels"]] for r in results]


def test_kiln_serve_returns_predicts_labels(
    serve_env: Any, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [str(p) for p in sorted((checkpoint.parents[2] / "mosaics" / "test").glob("*.png"))[:12]]
    port = free_port()
    command = [sys.executable, "-m", "kiln", "serve", "--model", str(checkpoint), "--name", "tags"]
    proc = subprocess.Popen(
        [*command, "--http-port", str(port), "--grpc-port", str(free_port())],
        env={**os.environ, "KILN_SERVE_ENV": str(serve_env.root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said = ""
        while "Ctrl-C stops it" not in said:  # kiln prints its lines once the server is ready
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, proc.communicate(timeout=10)
            said += line
        assert ready(f"127.0.0.1:{port}")
        assert f"kiln predict --url http://127.0.0.1:{port} IMAGES..." in said
        local = predict(load_any(checkpoint), images, topk=4)
        assert main(["predict", "--url", f"http://127.0.0.1:{port}", *images, "--topk", "4"]) == 0
        remote = json.loads(capsys.readouterr().out)
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        image = http.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[Path(images[0]).read_bytes()]], dtype=object))
        outputs = [http.InferRequestedOutput("LABELS"), http.InferRequestedOutput("LOGITS", class_count=4)]
        answer = client.infer("tags", [image], outputs=outputs)
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert _labels(remote) == _labels(local)
    assert sum(map(len, _labels(local))) > 0  # some images have labels
    scores = [label["score"] for r in remote for label in r["labels"]]
    assert np.allclose(scores, [label["score"] for r in local for label in r["labels"]], atol=1e-5)
    assert json.loads(answer.as_numpy("LABELS")[0, 0]) == remote[0]["labels"]  # the LABELS output itself
    shown = {entry.decode().split(":")[2] for entry in answer.as_numpy("LOGITS")[0]}  # "score:index:label"
    assert shown == {"plane", "car", "bird", "cat"}  # labels.txt holds the display names
    assert proc.returncode == 0
    assert not ready(f"127.0.0.1:{port}")
