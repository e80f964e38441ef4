"""Serving throughput on this machine: images/s and latency (p50/p99) of `kiln serve` (the Triton server of
the nvidia-pytriton wheel, kiln's python backend) at 1, 4 and 16 concurrent HTTP clients, each sending one
JPEG per request, with dynamic batching on and off; side by side with `kiln predict` over the same files in
one process.

    python -m benchmarks.serve_throughput [--model CHECKPOINT] [--requests 240]

Without --model it trains configs/photos_fixed.yaml once (ants/bees photos, tf_efficientnet_lite0 at 224).
Target on this CPU: 16 clients with dynamic batching >= 0.8 x kiln predict's images/s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import KILN_ENV, ROOT
from kiln.serving.server import free_port, ready

PHOTOS = ROOT / "data" / "hymenoptera_data"


def _ready(port: int) -> bool:
    return ready(f"127.0.0.1:{port}")


def serve(model: Path, port: int, extra: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln",
            "serve",
            "--model",
            str(model),
            "--http-port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--name",
            "photos",
            *extra,
        ],
        env=KILN_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not _ready(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"kiln serve did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.3)
    return proc


def clients(port: int, blobs: list[bytes], n_clients: int, requests: int) -> tuple[float, float, float]:
    import tritonclient.http as http

    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        c = http.InferenceServerClient(f"127.0.0.1:{port}")
        mine = []
        for i in range(k, requests, n_clients):
            inp = http.InferInput("IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[blobs[i % len(blobs)]]], dtype=object))
            t = time.perf_counter()
            c.infer("photos", [inp])
            mine.append(time.perf_counter() - t)
        c.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return requests / wall, q[49] * 1000, q[98] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a kiln checkpoint or export (default: train configs/photos_fixed.yaml)")
    p.add_argument("--requests", type=int, default=240, help="requests per measurement")
    args = p.parse_args()
    files = sorted((PHOTOS / "val").rglob("*.jpg"))
    blobs = [f.read_bytes() for f in files]
    with tempfile.TemporaryDirectory() as work:
        model = Path(args.model) if args.model else Path(work) / "run" / "checkpoints" / "best.pt"
        if not args.model:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kiln",
                    "train",
                    "-c",
                    str(ROOT / "configs/photos_fixed.yaml"),
                    f"run.dir={Path(work) / 'run'}",
                    "trainer.progress=off",
                    "logging.tensorboard=false",
                ],
                env=KILN_ENV,
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
        from kiln.inference.predict import load_any, predict

        loaded = load_any(model)
        predict(loaded, [str(f) for f in files[:8]], warn=lambda _: None)  # warm-up
        t0 = time.perf_counter()
        predict(loaded, [str(f) for f in files], warn=lambda _: None)
        base = len(files) / (time.perf_counter() - t0)
        print(
            f"kiln predict in one process: {base:.1f} images/s ({len(files)} JPEGs, decode + preprocess + "
            "model)\n"
        )
        print(
            f"{'dynamic batching':>16}  {'clients':>7}  {'images/s':>8}  {'x predict':>9}  {'p50 ms':>7}  "
            f"{'p99 ms':>7}"
        )
        for batching, extra in (("on", []), ("off", ["--no-dynamic-batching"])):
            port = free_port()
            proc = serve(model, port, extra)
            try:
                clients(port, blobs, 4, 16)  # warm-up: the model's first passes
                for n in (1, 4, 16):
                    rate, p50, p99 = clients(port, blobs, n, args.requests)
                    print(
                        f"{batching:>16}  {n:>7}  {rate:>8.1f}  {rate / base:>9.2f}  {p50:>7.1f}  "
                        f"{p99:>7.1f}",
                        flush=True,
                    )
            finally:
                proc.terminate()
                proc.wait(timeout=60)


if __name__ == "__main__":
    main()
