"""`kiln serve --model` as a user runs it: a subprocess serving a checkpoint, answering as `kiln predict`
does, and Ctrl-C stopping it (and its Triton server) cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.inference.predict import load_any, predict
from kiln.inference.runtime import softmax
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
            assert proc.poll() is None, _dead(proc)
            assert time.monotonic() < deadline, _dead(proc)
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
    assert "serving photos" in said
    assert f"ask   kiln predict --url http://127.0.0.1:{port} IMAGES..." in said  # the short command
    assert "stopping the server ... stopped" in out
    assert "Traceback" not in err
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
        assert proc.poll() is None, _dead(proc)
        assert time.monotonic() < deadline, _dead(proc)
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopping the server ... stopped" in out, err
    assert "Traceback" not in err, err
    assert not _servers(port), f"a Triton server outlived kiln serve: {_servers(port)}"


def test_the_server_environment_has_numpy_1_and_leaves_kilns_numpy_alone(serve_env: Any) -> None:
    theirs = subprocess.run(
        [str(serve_env.python), "-c", "import numpy, torch, kiln; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    assert theirs.stdout.startswith("1."), theirs.stderr[-2000:]
    ours = subprocess.run(
        [sys.executable, "-c", "import numpy; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ours.stdout.startswith("2."), ours.stdout


def _serve(serve_env: Any, model: Path, port: int, grpc_port: int, tmp: Path) -> subprocess.Popen:
    """`kiln serve` with its staging folder under ``tmp`` (a killed kiln cannot remove it)."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "kiln", "serve", "--model", str(model)),
            *("--http-port", str(port), "--grpc-port", str(grpc_port)),
        ],
        env={**os.environ, "KILN_SERVE_ENV": str(serve_env.root), "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it holds no port, memory or GPU: it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_a_killed_kiln_serve_takes_its_server_and_stubs_with_it(
    serve_env: Any, photo_model: tuple[Path, Path], tmp_path: Path
) -> None:
    port, grpc_port = free_port(), free_port()
    proc = _serve(serve_env, photo_model[0], port, grpc_port, tmp_path)
    deadline = time.monotonic() + 120
    while not _ready(port):
        assert proc.poll() is None, _dead(proc)
        assert time.monotonic() < deadline, _dead(proc)
        time.sleep(0.3)
    (server_line,) = _servers(port).splitlines()
    server = int(server_line.split()[0])
    stubs = [int(p) for p in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
    # a second kiln serve on the same ports names the server that holds them, before it starts another
    second = subprocess.run(
        [sys.executable, "-m", "kiln", "serve", "--model", str(photo_model[0]), "--http-port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert second.stderr.startswith(
        f"kiln: error: --http-port {port} is in use by pid {server} (tritonserver "
    )
    assert second.stderr.endswith(f"; stop it (kill {server}) or choose another --http-port\n")
    proc.kill()  # SIGKILL: kiln runs none of its own shutdown
    proc.communicate(timeout=10)
    killed = time.monotonic()
    while not all(_gone(pid) for pid in [server, *stubs]) and time.monotonic() < killed + 15:
        time.sleep(0.2)
    left = [pid for pid in [server, *stubs] if not _gone(pid)]
    for pid in left:  # a failed check leaves nothing running either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert stubs, "the server had no python backend stub to check"
    assert not left, f"pids {left} outlived a killed kiln serve ({time.monotonic() - killed:.1f} s after)"
    assert not _ready(port)


def test_a_port_held_by_another_process_is_named_before_anything_starts(
    photo_model: tuple[Path, Path],
) -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "kiln", "serve", "--model", str(photo_model[0]), "--grpc-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    me = os.getpid()
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"kiln: error: --grpc-port {port} is in use by pid {me} (python")
    assert proc.stderr.endswith(f"; stop it (kill {me}) or choose another --grpc-port\n")
    assert proc.stderr.count("\n") == 1
    assert time.monotonic() - started < 30  # refused before the model is staged or the environment made
