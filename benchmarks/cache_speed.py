"""Decode cache: decoding all 60,000 CIFAR-10 JPEGs into kiln's uint8 cache (first run), then loading the
cache (second run). Targets on the 2-core CPU: decode <= 10 s, cache load <= 1 s."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import cifar10_dir
from kiln.config import DataConfig
from kiln.data.cache import load_images
from kiln.data.sources import folder
from kiln.spec import ImageSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", help="CIFAR-10 image folder (default data/cifar10)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    raw = folder(DataConfig(source="folder", root=str(cifar10_dir(args.root))))
    paths = raw.train.paths + raw.test.paths
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d)
        t0 = time.perf_counter()
        a = load_images(paths, ImageSpec(3, (32, 32)), False, cache, args.workers)[0]
        decode = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = load_images(paths, ImageSpec(3, (32, 32)), False, cache, args.workers)[0]
        _ = int(b[-1, 0, 0, 0])  # touch the mapped data
        load = time.perf_counter() - t0
    print(
        f"{len(paths):,} JPEGs, {args.workers} processes -> uint8 {tuple(a.shape)} "
        f"({a.numel() / 2**20:.0f} MiB)"
    )
    print(f"decode + write cache: {decode:6.2f} s  ({len(paths) / decode:,.0f} images/s; target <= 10 s)")
    print(f"load cache (mmap):    {load:6.2f} s  (target <= 1 s); decode/load = {decode / load:,.0f}x")


if __name__ == "__main__":
    main()
