"""`kiln serve`: a model behind a real Triton Inference Server (KServe v2 over HTTP and gRPC)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Serve a kiln checkpoint or any kiln export (--model), or a Triton repository written by `kiln export
--format triton --backend python` (--repository), with the Triton Inference Server of the nvidia-pytriton
wheel: KServe v2 protocol over HTTP and gRPC, dynamic batching, health and readiness endpoints
(/v2/health/live, /v2/health/ready). Clients send encoded image files (input IMAGE, BYTES) or ready
tensors (input INPUT, FP32) and get LOGITS, or the top-k classes with their display names (Triton's
classification extension: class_count); a multi-label model also answers LABELS, one JSON string per
image with the classes at or above their threshold. Preprocessing happens in the server, as in `kiln
predict`; `kiln predict --url http://HOST:PORT IMAGES...` prints the same results as a local `kiln predict`.

The server's Python needs numpy<2 (its python backend is built against numpy 1.x): kiln keeps a small
environment for it in ~/.cache/kiln/serve-env (KILN_SERVE_ENV: a new or empty folder), made by `kiln
serve --setup` or the first `kiln serve`; kiln's own environment keeps its numpy. Ctrl-C stops the server
cleanly, and the server never outlives kiln (a killed kiln takes its server with it).
"""


def run(args: argparse.Namespace) -> int:
    import signal
    import tempfile
    from pathlib import Path

    from kiln.errors import KilnError
    from kiln.export.base import ExportOptions, TritonOptions
    from kiln.serving.env import ensure
    from kiln.serving.ports import check_free
    from kiln.serving.server import TritonServer
    from kiln.serving.stage import stage

    if args.setup and not (args.model or args.repository):
        print(f"serving environment ready: {ensure().root}")
        return 0
    if bool(args.model) == bool(args.repository):
        raise KilnError("kiln serve: give --model ARTIFACT or --repository REPO (one of them)")
    if args.http_port == args.grpc_port:
        raise KilnError(f"--http-port and --grpc-port are both {args.http_port}; give them different ports")
    check_free(args.host, args.http_port, "--http-port")  # before the model is staged: a leftover server
    check_free(args.host, args.grpc_port, "--grpc-port")  # of a killed kiln is named at once
    scheduling = TritonOptions(
        backend="python",
        dynamic_batching=args.dynamic_batching,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        instance_kind=args.instance_kind,
    )
    opts = ExportOptions(name=args.name, max_batch_size=args.max_batch_size, triton=scheduling)
    with tempfile.TemporaryDirectory(prefix="kiln-serve-") as work:
        staged = Path(work) / "repository"  # beside it: the server's log and kiln's link to itself
        repo = Path(args.repository) if args.repository else stage(args.model, staged, opts, args.trust)
        env = ensure()  # after the arguments and the model are checked: making it can take a while
        log_file = Path(work) / "tritonserver.log"
        server = TritonServer(env, repo, args.http_port, args.grpc_port, host=args.host, log_file=log_file)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            with server:
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
                server.proc.wait()  # type: ignore[union-attr]
        except KeyboardInterrupt:  # at any moment, start-up included: leaving `with server` stopped it
            print("\nkiln: stopping the server ... stopped", flush=True)
            return 0
        code = server.proc.returncode  # type: ignore[union-attr]
        raise KilnError(f"the Triton server stopped on its own (exit {code}): {server.log_tail()}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="serve a model with a real Triton server (HTTP and gRPC)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--model", metavar="ARTIFACT", help="a checkpoint, an export file or folder")
    s.add_argument(
        "--repository", metavar="REPO", help="a Triton repository from kiln export --backend python"
    )
    s.add_argument("--name", help="the model's name in the URL (default: model)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--max-batch-size", type=int, default=64, help="Triton's max_batch_size (default: 64)")
    s.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        help="answer each request alone (default: group concurrent requests)",
    )
    s.add_argument(
        "--queue-delay-us", type=int, default=500, help="dynamic batching's wait (default: 500 us)"
    )
    s.add_argument("--instances", type=int, default=1, help="model instances (default: 1)")
    s.add_argument("--instance-kind", choices=["auto", "gpu", "cpu"], default="auto")
    s.add_argument("--trust", action="store_true", help="allow .pt2 files (torch.export.load unpickles)")
    s.add_argument("--setup", action="store_true", help="make the serving environment (once; needs PyPI)")
    s.set_defaults(func=run)
