"""The streaming path (a DataLoader whose workers decode each batch as it is needed, for photo folders
larger than memory) against the parallel decode that fills the cache, side by side in one process:

    python -m benchmarks.stream_speed [--root data/cifar10] [--photos data/hymenoptera_data]

(a) parallel decode: every train image decoded by ``workers`` processes into one array (the cache's build);
(b) streaming: one epoch of the train loader with ``data.loader=stream`` and the same number of workers,
    batches delivered to the training loop (no model), and (c) with the tutorial's LeNet training on them.
Target: streaming >= 0.8 x the parallel decode rate on the CIFAR-10 JPEGs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, cifar10_dir, kiln_run
from kiln.config import DataConfig
from kiln.data import load_train, plan
from kiln.data.decode import decode_files


def rates(root: Path, workers: int, batch: int, image_size: int | None) -> tuple[float, float, int]:
    cfg = DataConfig(
        source="folder",
        root=str(root),
        batch_size=batch,
        num_workers=workers,
        image_size=image_size,
        loader="stream",
        val_split=0,
    )
    data_plan = plan(cfg)
    paths = data_plan.splits.train.paths  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    decode_files(paths, data_plan.spec, True, workers)
    decode = len(paths) / (time.perf_counter() - t0)
    loader = load_train(data_plan, cfg, 0, torch.device("cpu")).train
    loader.set_epoch(0)
    t0, n = time.perf_counter(), 0
    for x, _, _ in loader:
        n += len(x)
    return decode, n / (time.perf_counter() - t0), len(paths)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root", help="CIFAR-10 image folder (default data/cifar10, unpacked from ../shared/data)"
    )
    p.add_argument("--photos", default=str(ROOT / "data" / "hymenoptera_data"))
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    cifar = cifar10_dir(args.root)
    print(f"{torch.get_num_threads()} threads, {args.workers} decode workers\n")
    decode, stream, n = rates(cifar, args.workers, 256, None)
    print(
        f"CIFAR-10 JPEGs ({n:,} train images, 32x32): parallel decode {decode:,.0f} img/s, streaming "
        f"{stream:,.0f} img/s = {stream / decode:.2f} x (target >= 0.80)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as d:
        m = kiln_run(
            [
                "data.source=folder",
                f"data.root={cifar}",
                "data.loader=stream",
                "trainer.epochs=1",
                f"run.dir={d}",
                "data.eval_batch_size=1000",
                f"data.num_workers={args.workers}",
                "data.batch_size=256",
            ]
        )
    print(f"  training LeNet on the stream (batch 256): {m[0]['images_per_s']:,.0f} img/s", flush=True)
    if Path(args.photos).is_dir():
        decode, stream, n = rates(Path(args.photos), args.workers, 32, 224)
        print(
            f"hymenoptera photos ({n} train photos, 193-2592 px, presized for 224 crops): parallel decode "
            f"{decode:,.0f} img/s, streaming {stream:,.0f} img/s = {stream / decode:.2f} x"
        )


if __name__ == "__main__":
    main()
