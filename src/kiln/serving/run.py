"""``serve``: the whole of ``kiln serve``: the ports checked, the model staged as a repository (or the
user's repository taken as it is), the serving environment made, the server started, its addresses said,
and the server stopped on Ctrl-C or SIGTERM (kiln's one handler raises ``signals.Interrupt`` outside a
graceful section: leaving ``with server`` stops it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kiln import signals
from kiln.errors import KilnError
from kiln.export.base import ExportOptions
from kiln.serving.env import ensure
from kiln.serving.ports import check_free
from kiln.serving.server import TritonServer
from kiln.serving.stage import stage


def serve(
    model: str | None,
    repository: str | None,
    opts: ExportOptions,
    host: str,
    http_port: int,
    grpc_port: int,
    trust: bool = False,
) -> int:
    """Serve ``model`` (a checkpoint or export) or ``repository`` until a stop; returns the exit code."""
    if bool(model) == bool(repository):
        raise KilnError("kiln serve: give --model ARTIFACT or --repository REPO (one of them)")
    if http_port == grpc_port:
        raise KilnError(f"--http-port and --grpc-port are both {http_port}; give them different ports")
    check_free(host, http_port, "--http-port")  # before the model is staged: a leftover server
    check_free(host, grpc_port, "--grpc-port")  # of a killed kiln is named at once
    with tempfile.TemporaryDirectory(prefix="kiln-serve-") as work:
        staged = Path(work) / "repository"  # beside it: the server's log and kiln's link to itself
        repo = Path(repository) if repository else stage(model, staged, opts, trust)  # type: ignore[arg-type]
        env = ensure()  # after the arguments and the model are checked: making it can take a while
        server = TritonServer(
            env, repo, http_port, grpc_port, host=host, log_file=Path(work) / "tritonserver.log"
        )
        try:
            with server:
                announce(server, repo)
                server.proc.wait()  # type: ignore[union-attr]
        except signals.Interrupt:  # at any moment, start-up included: leaving `with server` stopped it
            print("\nkiln: stopping the server ... stopped", flush=True)
            return 0
        code = server.proc.returncode  # type: ignore[union-attr]
        raise KilnError(f"the Triton server stopped on its own (exit {code}): {server.log_tail()}")


def announce(server: TritonServer, repo: Path) -> None:
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    name = f" --name {models[0]}" if len(models) > 1 else ""
    print(
        f"kiln: serving {', '.join(models)} from {repo}\n"
        f"  HTTP  http://{server.http_url}/v2/models/{models[0]}/infer"
        "   (ready: /v2/health/ready)\n"
        f"  gRPC  {server.grpc_url}\n"
        f"  ask   kiln predict --url http://{server.http_url}{name} IMAGES...\n"
        "  Ctrl-C stops it",
        flush=True,
    )
