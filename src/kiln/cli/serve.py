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
    from kiln.export.base import ExportOptions, TritonOptions
    from kiln.serving.env import ensure
    from kiln.serving.run import serve

    if args.setup and not (args.model or args.repository):
        print(f"serving environment ready: {ensure().root}")
        return 0
    scheduling = TritonOptions(
        backend="python",
        dynamic_batching=args.dynamic_batching,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        instance_kind=args.instance_kind,
    )
    opts = ExportOptions(name=args.name, max_batch_size=args.max_batch_size, triton=scheduling)
    return serve(args.model, args.repository, opts, args.host, args.http_port, args.grpc_port, args.trust)


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
