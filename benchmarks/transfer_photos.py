"""The transfer-learning tutorial against kiln's photo recipes, in one run on this machine, on the tutorial's
own ants/bees photos with the shared ImageNet weights (tf_efficientnet_lite0):

    python -m benchmarks.transfer_photos [--seeds 3] [--tutorial-epochs 25]

- the tutorial's recipe as users write it (benchmarks/tutorial_transfer.py), both scenarios: val accuracy
  per epoch, its best epoch, the wall time of the whole process until that best epoch;
- kiln's configs/photos_fixed.yaml and configs/photos_finetune.yaml: val accuracy per epoch, the last
  epoch's (mean over seeds), the wall time of the whole `kiln train` process with a cold cache (start-up and
  decoding included), and once more on a warm cache.
Targets: kiln's last epoch >= the tutorial's best epoch, and the whole kiln run >= 10x (fixed) / 8x (fine-
tuning) shorter than the tutorial's time to its best epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT

PHOTOS = ROOT / "data" / "hymenoptera_data"
WEIGHTS = Path(
    os.environ.get(
        "KILN_WEIGHTS", ROOT.parent / "shared" / "data" / "tf_efficientnet_lite0_imagenet.safetensors"
    )
)
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}


def tutorial(mode: str, epochs: int) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.tutorial_transfer",
        "--mode",
        mode,
        "--root",
        str(PHOTOS),
        "--weights",
        str(WEIGHTS),
        "--epochs",
        str(epochs),
    ]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


def kiln(recipe: str, seed: int, cache: Path) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kiln",
                "train",
                "-c",
                str(ROOT / "configs" / f"{recipe}.yaml"),
                f"run.dir={run}",
                f"run.seed={seed}",
                f"data.root={PHOTOS}",
                f"model.pretrained={WEIGHTS}",
                f"data.cache_dir={cache}",
                "trainer.progress=off",
                "logging.tensorboard=false",
            ],
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        seconds = time.perf_counter() - t0
        return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()], seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tutorial-epochs", type=int, default=25)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_transfer_photos.json"))
    args = p.parse_args()
    if not PHOTOS.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs {PHOTOS} (make data) and {WEIGHTS}")
    report: dict = {}
    for mode, recipe, target in (("fixed", "photos_fixed", 10), ("finetune", "photos_finetune", 8)):
        tut = tutorial(mode, args.tutorial_epochs)
        best = max(tut, key=lambda e: (e["val_acc"], -e["epoch"]))
        runs = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as cache:  # cold: decoded from the JPEGs in this process
                runs.append(kiln(recipe, seed, Path(cache)))
        with tempfile.TemporaryDirectory() as cache:
            kiln(recipe, 0, Path(cache))
            warm = kiln(recipe, 0, Path(cache))[1]
        last = [r[0][-1]["val_acc"] for r in runs]
        cold = statistics.mean(r[1] for r in runs)
        report[mode] = {
            "tutorial": tut,
            "tutorial_best": best,
            "tutorial_last": tut[-1]["val_acc"],
            "kiln_epochs": [[m["val_acc"] for m in r[0]] for r in runs],
            "kiln_last": last,
            "kiln_last_mean": statistics.mean(last),
            "kiln_seconds_cold": [r[1] for r in runs],
            "kiln_seconds_warm": warm,
            "speedup": best["seconds"] / cold,
        }
        r = report[mode]
        print(f"\n{mode}: tutorial val acc per epoch {[e['val_acc'] for e in tut]}", flush=True)
        print(
            f"  tutorial: best epoch {best['val_acc']:.3f} (epoch {best['epoch']} of {len(tut)}) after "
            f"{best['seconds']:.1f} s; last epoch {tut[-1]['val_acc']:.3f}; {tut[-1]['seconds']:.1f} s for "
            "all"
        )
        for i, (epochs, seconds) in enumerate(zip(r["kiln_epochs"], r["kiln_seconds_cold"], strict=True)):
            print(
                f"  kiln {recipe} seed {i}: val acc per epoch {[round(v, 4) for v in epochs]}, whole process "
                f"{seconds:.1f} s (cold cache)"
            )
        print(
            f"  kiln: last epoch {r['kiln_last_mean']:.4f} mean of {args.seeds} seeds (min "
            f"{min(last):.4f}; target "
            f">= {best['val_acc']:.3f}); whole run {cold:.1f} s cold, {warm:.1f} s warm = "
            f"{r['speedup']:.1f}x "
            f"shorter than the tutorial's time to its best epoch (target >= {target}x)",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nfigures: {args.out}")


if __name__ == "__main__":
    main()
