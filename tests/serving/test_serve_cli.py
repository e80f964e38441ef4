"""`kiln serve --model` as a user runs it: a subprocess serving a checkpoint, answering as `kiln predict`
does, and Ctrl-C stopping it (and its Triton server) cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.export.predict import load_any, predict
from kiln.export.runtime import softmax
from kiln.serving.server import free_port, ready

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is the serve extra")
pytestmark = pytest.mark.slow


def _ready(port: int) -> bool:
    return ready(f"127.0.0.1:{port}")


def _servers(port: int) -> str:
    """The Triton servers listening on ``port`` (pgrep's pattern after ``--``: it starts with a dash)."""
    return subprocess.run(
        ["pgrep", "-af", "--", f"--http-port={port}"], capture_output=True, text=True
    ).stdout


def _dead(proc: subprocess.Popen) -> tuple[str, str]:
    proc.kill()
    return proc.communicate()


def test_kiln_serve_answers_like_predict_and_ctrl_c_stops_it(
    serve_env: Any, photo_model: tuple[Path, Path]
) -> None:
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "KILN_SERVE_ENV": str(serve_env.root)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln",
            "serve",
            "--model",
            str(photo_model[0]),
            "--http-port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--name",
            "photos",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _ready(port):
            assert proc.poll() is None and time.monotonic() < deadline, _dead(proc)
            time.sleep(0.3)
        said = ""  # what the user sees before pressing Ctrl-C (kiln polls readiness too: it may trail ours)
        while "Ctrl-C stops it" not in said:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, _dead(proc)
            said += line
        f = sorted((photo_model[1] / "val").rglob("*.jpg"))[3]
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        inp = http.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[f.read_bytes()]], dtype=object))
        probs = softmax(client.infer("photos", [inp]).as_numpy("LOGITS"))[0]
        want = predict(load_any(photo_model[0]), [str(f)], topk=1)[0]["top"][0]
        assert load_any(photo_model[0]).classes[int(probs.argmax())] == want["class"]
        assert abs(float(probs.max()) - want["prob"]) < 1e-5
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "serving photos" in said and "stopping the server ... stopped" in out and "Traceback" not in err
    assert not _ready(port)
    assert not _servers(port), f"a Triton server outlived kiln serve: {_servers(port)}"


def test_ctrl_c_while_the_server_starts_leaves_no_server_behind(
    serve_env: Any, photo_model: tuple[Path, Path]
) -> None:
    port = free_port()
    env = {**os.environ, "KILN_SERVE_ENV": str(serve_env.root)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln",
            "serve",
            "--model",
            str(photo_model[0]),
            "--http-port",
            str(port),
            "--grpc-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60  # the server process is up, its model not yet loaded
    while not _servers(port):
        assert proc.poll() is None and time.monotonic() < deadline, _dead(proc)
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopping the server ... stopped" in out and "Traceback" not in err, err
    assert not _servers(port), f"a Triton server outlived kiln serve: {_servers(port)}"


def test_the_server_environment_has_numpy_1_and_leaves_kilns_numpy_alone(serve_env: Any) -> None:
    theirs = subprocess.run(
        [str(serve_env.python), "-c", "import numpy, torch, kiln; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert theirs.returncode == 0 and theirs.stdout.startswith("1."), theirs.stderr[-2000:]
    ours = subprocess.run(
        [sys.executable, "-c", "import numpy; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ours.stdout.startswith("2."), ours.stdout
