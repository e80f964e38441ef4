"""GPU speedrun: kiln's `configs/cifar10_speedrun.yaml` vs airbench94 (PyPI `airbench`) on the same GPU and data.

Both train on the local CIFAR-10 JPEG copy: airbench's loader reads `cifar10/train.pt` / `test.pt` (dicts of
uint8 images [N,32,32,3], int64 labels, classes), built here from the JPEGs with kiln's decoder. Reports the
mean accuracy over --runs runs each and kiln's training time (training + TTA eval, data load and compile
excluded) against airbench's. Target: kiln <= 1.2 x airbench's time at equal accuracy.
Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, cifar10_dir


def build_airbench_files(root: Path, out: Path) -> None:
    from kiln.config import DataConfig
    from kiln.data.decode import load_images
    from kiln.data.sources import folder

    raw = folder(DataConfig(source="folder", root=str(root)))
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train.pt", raw.train), ("test.pt", raw.test)):
        images = load_images(
            split.paths, 3, (32, 32), False, Path("~/.cache/kiln").expanduser(), os.cpu_count() or 1
        )
        torch.save({"images": images.permute(0, 2, 3, 1).contiguous(), "labels": torch.tensor(split.labels),
                    "classes": raw.classes}, out / name)  # fmt: skip


def run_airbench(workdir: Path, runs: int) -> tuple[list[float], list[float]]:
    import airbench

    cwd = os.getcwd()
    os.chdir(workdir)  # airbench reads ./cifar10/{train,test}.pt
    try:
        airbench.warmup94(verbose=False)
        accs, secs = [], []
        for r in range(runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            accs.append(float(airbench.train94(run=r, verbose=False)))
            torch.cuda.synchronize()
            secs.append(time.perf_counter() - t0)  # includes airbench's own (tiny) loader setup
    finally:
        os.chdir(cwd)
    return accs, secs


def run_kiln(root: Path, runs: int, epochs: float | None) -> tuple[list[float], list[float]]:
    import json

    from kiln.config import load_config
    from kiln.engine.trainer import fit

    accs, secs = [], []
    for r in range(runs + 1):  # run 0 warms up cuDNN autotuning and the decode cache; not counted
        with tempfile.TemporaryDirectory() as d:
            over = [
                "data.source=folder",
                f"data.root={root}",
                f"run.dir={d}",
                f"run.seed={r}",
                "trainer.progress=off",
            ]
            if epochs:
                over.append(f"trainer.epochs={int(epochs)}")
            summary = fit(load_config(ROOT / "configs/cifar10_speedrun.yaml", over))
            lines = [json.loads(s) for s in (Path(d) / "metrics.jsonl").read_text().splitlines()]
        if r:
            accs.append(summary["test"]["accuracy"])
            secs.append(sum(m["seconds"] for m in lines))
    return accs, secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="CIFAR-10 image folder (default data/cifar10)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--epochs", type=float, help="override the speedrun config's epoch count")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_speedrun: no CUDA device here; this benchmark needs a GPU. Skipped.")
        sys.exit(0)
    root = cifar10_dir(args.root)
    with tempfile.TemporaryDirectory() as d:
        build_airbench_files(root, Path(d) / "cifar10")
        ab_acc, ab_s = run_airbench(Path(d), args.runs)
    k_acc, k_s = run_kiln(root, args.runs, args.epochs)
    name = torch.cuda.get_device_name()
    print(f"{name}: {args.runs} runs each on the local CIFAR-10 JPEG copy")
    print(f"airbench94: accuracy {statistics.mean(ab_acc):.4f} +- {statistics.pstdev(ab_acc):.4f}, "
          f"{statistics.mean(ab_s):.2f} s")  # fmt: skip
    print(f"kiln:       accuracy {statistics.mean(k_acc):.4f} +- {statistics.pstdev(k_acc):.4f}, "
          f"{statistics.mean(k_s):.2f} s")  # fmt: skip
    print(
        f"kiln / airbench time: {statistics.mean(k_s) / statistics.mean(ab_s):.2f}x (target <= 1.2x at equal accuracy)"
    )


if __name__ == "__main__":
    main()
