"""Photo folders that ImageNet does not know, and two it does, built from the real images in ../shared/data
for ``benchmarks/own_data.py``: small train sets (30-150 per class), where defaults break.

Every folder has train/, val/ and test/ (class subfolders), except the multi-label mosaics (train.csv,
val.csv and test.csv of label names, as kiln's CSV source reads them) and hymenoptera (the tutorial's
train/ and val/ only). Images are symlinked where they are used as they are; grayscale copies, crops and
mosaics are written as files. Everything lands under data/own_data (git-ignored).

    python -m benchmarks.own_folders          # builds (or finds) every folder and prints their sizes
"""

from __future__ import annotations

import random
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from benchmarks.common import ROOT, SHARED

DEST = ROOT / "data" / "own_data"
STEEL = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


def unpacked(name: str, archive: str) -> Path:
    target = ROOT / "data" / name
    if not target.is_dir():
        if not (SHARED / archive).is_file():
            sys.exit(f"{SHARED / archive} is absent: the benchmark needs ../shared/data")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / archive) as tf:
            tf.extractall(target.parent, filter="data")
    return target


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def link_split(dest: Path, picks: dict[str, list[Path]]) -> None:
    for cls, paths in picks.items():
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for path in paths:
            (dest / cls / path.name).symlink_to(path.resolve())


def per_class(
    source: Path, counts: dict[str, int], skip: dict[str, int] | None = None
) -> dict[str, list[Path]]:
    """The first ``counts[c]`` images of each class folder (after ``skip[c]`` of them)."""
    skip = skip or {}
    return {c: files(source / c)[skip.get(c, 0) : skip.get(c, 0) + n] for c, n in counts.items()}


def steel(name: str, train_counts: list[int]) -> Path:
    """neu-steel: train from its train/ (the counts per class), val and test 20 per class from its val/."""
    dest = DEST / name
    if (dest / "test").is_dir():
        return dest
    source = unpacked("neu-steel", "neu-steel-jpeg.tar.gz")
    link_split(dest / "train", per_class(source / "train", dict(zip(STEEL, train_counts, strict=True))))
    link_split(dest / "val", per_class(source / "val", dict.fromkeys(STEEL, 20)))
    link_split(dest / "test", per_class(source / "val", dict.fromkeys(STEEL, 20), dict.fromkeys(STEEL, 20)))
    return dest


def digits() -> Path:
    """MNIST digits as small grayscale photos: 30 per class to train, 30 to validate, 100 to test."""
    dest = DEST / "digits"
    if (dest / "test").is_dir():
        return dest
    source = unpacked("mnist", "mnist-png.tar.gz")
    classes = [str(d) for d in range(10)]
    link_split(dest / "train", per_class(source / "train", dict.fromkeys(classes, 30)))
    link_split(
        dest / "val", per_class(source / "train", dict.fromkeys(classes, 30), dict.fromkeys(classes, 30))
    )
    link_split(dest / "test", per_class(source / "test", dict.fromkeys(classes, 100)))
    return dest


def imagenette() -> Path:
    """In-domain: 100 imagenette photos per class to train, 30 to validate and 100 to test (from its val/)."""
    dest = DEST / "imagenette"
    if (dest / "test").is_dir():
        return dest
    source = unpacked("imagenette", "imagenette-jpeg.tar.gz")
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    link_split(dest / "train", per_class(source / "train", dict.fromkeys(classes, 100)))
    link_split(dest / "val", per_class(source / "val", dict.fromkeys(classes, 30)))
    link_split(
        dest / "test", per_class(source / "val", dict.fromkeys(classes, 100), dict.fromkeys(classes, 30))
    )
    return dest


def hymenoptera() -> Path:
    """In-domain: the transfer tutorial's ants and bees, as it ships (train/ and val/)."""
    return unpacked("hymenoptera_data", "hymenoptera-jpeg.tar.gz")


def mosaics() -> Path:
    """Multi-label: 2x2 mosaics of neu-steel tiles (each tile a whole 200 px photo at 112 px, 2-4 distinct
    defect classes per mosaic), labelled with the classes they show. 320 train mosaics from its train/
    photos, 80 val and 150 test from its val/ photos."""
    dest = DEST / "mosaics"
    if (dest / "test.csv").is_file():
        return dest
    source = unpacked("neu-steel", "neu-steel-jpeg.tar.gz")
    rng = random.Random(0)
    pools = {split: {c: files(source / split / c) for c in STEEL} for split in ("train", "val")}
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for split, count, pool in (("train", 320, "train"), ("val", 80, "val"), ("test", 150, "val")):
        rows = ["filepath,label"]
        for i in range(count):
            classes = rng.sample(STEEL, rng.choice((2, 3, 4)))
            tiles = [rng.choice(classes) for _ in range(4)]
            for c in classes:  # every chosen class shows at least once
                if c not in tiles:
                    tiles[rng.randrange(4)] = c
            canvas = Image.new("L", (224, 224))
            for t, cls in enumerate(tiles):
                tile = Image.open(rng.choice(pools[pool][cls])).convert("L").resize((112, 112))
                canvas.paste(tile, (112 * (t % 2), 112 * (t // 2)))
            name = f"images/{split}-{i:04d}.jpg"
            canvas.save(dest / name, quality=90)
            rows.append(f"{name},{' '.join(sorted(set(tiles)))}")
        (dest / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return dest


FOLDERS: dict[str, Callable[[], Path]] = {
    "steel": lambda: steel("steel", [150] * 6),
    "steel-30": lambda: steel("steel-30", [30] * 6),
    "steel-skewed": lambda: steel("steel-skewed", [150, 90, 50, 25, 15, 10]),
    "digits": digits,
    "mosaics": mosaics,
    "hymenoptera": hymenoptera,
    "imagenette": imagenette,
}
IN_DOMAIN = ("hymenoptera", "imagenette")  # ImageNet knows their classes


if __name__ == "__main__":
    for folder_name, build in FOLDERS.items():
        print(folder_name, build())
