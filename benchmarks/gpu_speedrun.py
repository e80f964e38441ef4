"""GPU speedrun: kiln's `configs/cifar10_speedrun.yaml` vs airbench94 (PyPI `airbench`) on the same GPU and
data.

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
    from kiln.data.cache import load_images
    from kiln.data.sources import folder
    from kiln.spec import ImageSpec

    raw = folder(DataConfig(source="folder", root=str(root)))
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train.pt", raw.train), ("test.pt", raw.test)):
        images = load_images(
            split.paths,
            ImageSpec(3, (32, 32)),
            False,
            Path("~/.cache/kiln").expanduser(),
            os.cpu_count() or 1,
        )[0]
        labels = torch.tensor(split.labels)
        # The folder lists class by class; torchvision's CIFAR-10 arrays are in random order, and airbench
        # whitens from the first 5,000 train images, so keep that order random (fixed) as it expects.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        torch.save(
            {
                "images": images[order].permute(0, 2, 3, 1).contiguous(),
                "labels": labels[order],
                "classes": raw.classes,
            },
            out / name,
        )


def run_airbench(workdir: Path, runs: int) -> tuple[list[float], list[float]]:
    """airbench 0.1.x: ``train94(verbose=False)`` returns the trained model (no evaluation), so the TTA
    evaluation is run here with airbench's own ``evaluate`` at its tta_level, inside the timed scope."""
    import airbench
    from airbench.lib_airbench94 import hyp

    cwd = os.getcwd()
    os.chdir(workdir)  # airbench reads ./cifar10/{train,test}.pt
    try:
        # the loaders are built once, outside the timing (data load excluded, as for kiln)
        train = airbench.CifarLoader(
            "cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"], altflip=True
        )
        test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
        airbench.warmup94(train_loader=train, verbose=False)
        accs, secs = [], []
        for r in range(runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model = airbench.train94(train_loader=train, run=r, verbose=False)
            accs.append(airbench.evaluate(model, test, tta_level=hyp["net"]["tta_level"]))
            torch.cuda.synchronize()
            secs.append(time.perf_counter() - t0)  # training + whitening init + TTA evaluation
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
        if r:  # the same scope as airbench's: every epoch (init included) plus the final TTA evaluation
            accs.append(summary["test"]["accuracy"])
            secs.append(sum(m["seconds"] for m in lines) + summary["test"]["seconds"])
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
    try:
        import airbench  # noqa: F401
    except ImportError:
        sys.exit("gpu_speedrun: the airbench package is missing: pip install 'torchkiln[bench]'")
    root = cifar10_dir(args.root)
    with tempfile.TemporaryDirectory() as d:
        build_airbench_files(root, Path(d) / "cifar10")
        ab_acc, ab_s = run_airbench(Path(d), args.runs)
    k_acc, k_s = run_kiln(root, args.runs, args.epochs)
    name = torch.cuda.get_device_name()
    print(f"{name}: {args.runs} runs each on the local CIFAR-10 JPEG copy")
    print(
        f"airbench94: accuracy {statistics.mean(ab_acc):.4f} +- {statistics.pstdev(ab_acc):.4f}, "
        f"{statistics.mean(ab_s):.2f} s"
    )
    print(
        f"kiln:       accuracy {statistics.mean(k_acc):.4f} +- {statistics.pstdev(k_acc):.4f}, "
        f"{statistics.mean(k_s):.2f} s"
    )
    print(
        f"kiln / airbench time: {statistics.mean(k_s) / statistics.mean(ab_s):.2f}x (target <= 1.2x at "
        "equal accuracy)"
    )


if __name__ == "__main__":
    main()
