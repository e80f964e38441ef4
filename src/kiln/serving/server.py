"""The Triton server of the ``nvidia-pytriton`` wheel on a model repository, on loopback ports by default:
started in its own process group, ready when ``/v2/health/ready`` answers, stopped with SIGTERM (then
SIGKILL) so that no backend stub outlives it.

Its life is tied to kiln's: when kiln dies without stopping it (kill -9, the OOM killer, a crash) the
kernel sends it SIGTERM (``PR_SET_PDEATHSIG``), it shuts down as on Ctrl-C, and each python backend stub,
which watches its parent, exits after it. Measured on a 2-core CPU: server and stub gone ~4 s after kill -9
of kiln; without the tie both ran on, holding the ports."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from kiln.errors import KilnError
from kiln.serving.env import ServeEnv
from kiln.serving.ports import check_free

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent dies
KILN_PACKAGE = Path(__file__).resolve().parents[1]  # the kiln this process runs (a checkout's src/kiln too)


def link_kiln(folder: Path) -> Path:
    """``folder/kiln-source``, holding only a link named ``kiln`` to the package this process runs. The
    python backend's stub runs its interpreter isolated (PYTHONPATH ignored): kiln's model.py puts this
    folder first on sys.path (``KILN_SOURCE``), so the server runs this kiln, not another one its
    environment may link to (a source checkout on PYTHONPATH beside an installed kiln), and nothing else."""
    source = folder / "kiln-source"
    source.mkdir(parents=True, exist_ok=True)
    link = source / "kiln"
    if link.is_symlink():  # kiln's own link from an earlier server: replaced, never anything else
        link.unlink()
    if not link.exists():
        link.symlink_to(KILN_PACKAGE, target_is_directory=True)
    return source


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to SIGTERM the child when this process dies, however it dies
    (Linux; None elsewhere). The kernel ties it to the thread that starts the child: start servers from
    the main thread (or one that lives as long as the server should)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it
    parent = os.getpid()

    def tie() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # kiln died between the fork and the prctl: go now
            os.kill(os.getpid(), signal.SIGTERM)

    return tie


def ready(http_url: str) -> bool:
    """Whether the server at ``host:port`` answers KServe v2's readiness probe with 200."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class TritonServer:
    def __init__(
        self,
        env: ServeEnv,
        repository: Path,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
    ) -> None:
        self.env, self.repository, self.host = env, Path(repository), host
        self.http_port, self.grpc_port = http_port, grpc_port
        self.metrics_port = metrics_port or free_port(host)
        self.log_file = log_file or self.repository.parent / f"tritonserver-{http_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            str(self.env.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.env.backends}",
            f"--cache-directory={self.env.tritonserver.parent.parent / 'caches'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=10",
            "--pinned-memory-pool-byte-size=0",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]

    def check_ports(self) -> None:
        """A port another process listens on (a server a killed kiln left behind) is named, with its pid."""
        check_free(self.host, self.http_port, "--http-port")
        check_free(self.host, self.grpc_port, "--grpc-port")

    def start(self, timeout: float = 180) -> TritonServer:
        self.check_ports()
        # beside the log, never inside the repository (Triton would take the folder for a model)
        beside = self.log_file.parent
        source = link_kiln(beside.parent if beside.resolve() == self.repository.resolve() else beside)
        environ = {**self.env.server_environ(), "KILN_SOURCE": str(source)}
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environ,
                start_new_session=True,  # Ctrl-C in kiln's terminal does not reach it: kiln stops it
                preexec_fn=die_with_this_process(),  # and kiln's death, however it comes, stops it too
            )
        try:  # the server has a session of its own (Ctrl-C does not reach it): stopped here on any failure
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline, proc = time.monotonic() + timeout, self.proc
        assert proc is not None  # started
        while not self.ready():
            if proc.poll() is not None:
                raise KilnError(
                    f"the Triton server exited ({proc.returncode}) before it was ready: "
                    f"{self.log_tail()}; whole log: {self.log_file}"
                )
            if time.monotonic() > deadline:
                raise KilnError(
                    f"the Triton server was not ready after {timeout:.0f} s; log: {self.log_file}"
                )
            time.sleep(0.2)

    def ready(self) -> bool:
        return ready(self.http_url)

    def log_tail(self, lines: int = 3) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.is_file() else ""
        errors = [ln.strip() for ln in text.splitlines() if ln.startswith("E") or "error" in ln.lower()]
        return " | ".join((errors or text.strip().splitlines() or ["no output"])[-lines:])

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the whole process group (server and stubs), SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # a stub left behind in the group
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
