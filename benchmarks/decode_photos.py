"""Reduced-scale JPEG decoding (PIL ``draft``) on the transfer-learning tutorial's photos, side by side:
every photo decoded upright and resized as kiln stores it for evaluation (shorter side to 256 for a
224 px model at crop_pct 0.875), once decoding the whole JPEG and once letting libjpeg decode at 1/2, 1/4
or 1/8 scale where that still covers 256 px. Also the pixels' mean absolute difference.

    python -m benchmarks.decode_photos [--photos data/hymenoptera_data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT
from kiln.data.decode import RESAMPLE, _read, presized
from kiln.spec import ImageSpec

SPEC = ImageSpec(3, (224, 224), "crop", crop_pct=0.875)


def decode(path: Path, draft: bool) -> np.ndarray:
    im, (h0, w0) = _read(path, 3, max(SPEC.resize_size) if draft else None)
    h, w = presized(h0, w0, SPEC, train=False)
    return np.asarray(im.resize((w, h), RESAMPLE[SPEC.interpolation]) if im.size != (w, h) else im)


def rate(files: list[Path], draft: bool, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in files:
            decode(f, draft)
        best = min(best, time.perf_counter() - t0)
    return len(files) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(ROOT / "data" / "hymenoptera_data"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    files = sorted(f for f in Path(args.photos).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg"))
    big = []
    for f in files:
        with Image.open(f) as im:
            if min(im.size) >= 2 * max(SPEC.resize_size):  # libjpeg can decode these at 1/2 scale or less
                big.append(f)
    diffs = [np.abs(decode(f, True).astype(np.int16) - decode(f, False)).mean() for f in big]
    print(f"{len(files)} JPEGs, {len(big)} of them at least 512 px on the shorter side (decoded reduced)")
    for name, subset in (("all photos", files), ("the large ones", big)):
        if subset:
            full, drafted = rate(subset, False, args.repeat), rate(subset, True, args.repeat)
            print(
                f"{name:>15}: full decode {full:7.1f} img/s, reduced {drafted:7.1f} img/s: "
                f"{drafted / full:.2f}x"
            )
    if diffs:
        print(
            f"pixels of the reduced decode vs the full one: mean abs diff {np.mean(diffs):.2f} grey levels "
            f"(max over photos {max(diffs):.2f}) of 255"
        )


if __name__ == "__main__":
    main()
