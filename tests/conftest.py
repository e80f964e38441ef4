"""Shared fixtures: real data only. ``../shared/data`` (CIFAR-10 JPEGs, MNIST PNGs + CSV) is unpacked once
into the git-ignored ``data/`` folder; tests that need it are skipped with a reason where it is absent."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# Each test file marks its own tier: `pytestmark = pytest.mark.slow` for subprocess, server, DDP, real-data
# and multi-epoch tests, or `@pytest.mark.slow` on single tests in a file that mixes both (said at its top).


SHARED = ROOT.parent / "shared" / "data"

# kiln stops within a second or two of a signal (0.1-1.5 s measured on 2 cores; benchmarks/photos_first_hour
# times it). Signal tests check the state a stop leaves and bound the wait only loosely: every phase they
# interrupt runs far longer than this, and a CI machine under load once took 2.03 s for a 0.4-1.5 s stop.
STOP_SECONDS = 10.0
DATA = ROOT / "data"


def _unpack(name: str, archive: str) -> Path:
    target = DATA / name
    if (target / ".unpacked").exists():
        return target
    src = SHARED / archive
    if not src.is_file():
        pytest.skip(f"{src} is absent (it ships beside the project in CI only); real-data test skipped")
    DATA.mkdir(exist_ok=True)
    with tarfile.open(src) as tf:
        tf.extractall(DATA, filter="data")
    (target / ".unpacked").touch()
    return target


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    return _unpack("cifar10", "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _unpack("mnist", "mnist-png.tar.gz")


@pytest.fixture(scope="session")
def hymenoptera_dir() -> Path:
    return _unpack("hymenoptera_data", "hymenoptera-jpeg.tar.gz")


@pytest.fixture(scope="session")
def imagenette_dir() -> Path:
    return _unpack("imagenette", "imagenette-jpeg.tar.gz")


@pytest.fixture(scope="session")
def neu_steel_dir() -> Path:
    """Grayscale photos of steel surface defects: 6 classes ImageNet never saw (train 150, val 40 each)."""
    return _unpack("neu-steel", "neu-steel-jpeg.tar.gz")


@pytest.fixture(scope="session")
def imagenet_weights() -> Path:
    """Real ImageNet weights of timm's tf_efficientnet_lite0 (safetensors, with timm's key names)."""
    path = SHARED / "tf_efficientnet_lite0_imagenet.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is absent (it ships beside the project in CI only); real-weights test skipped")
    return path


def photo_subset(
    source: Path,
    dest: Path,
    classes: int,
    per_class: int,
    splits: tuple[str, ...] = ("train", "val"),
    gray: bool = False,
) -> Path:
    """A smaller photo folder made of real photos (symlinks, or grayscale copies with ``gray``)."""
    for split in splits:
        for cls in sorted(p.name for p in (source / split).iterdir() if p.is_dir())[:classes]:
            (dest / split / cls).mkdir(parents=True, exist_ok=True)
            for photo in sorted((source / split / cls).iterdir())[:per_class]:
                target = dest / split / cls / photo.name
                if gray:
                    Image.open(photo).convert("L").save(target.with_suffix(".png"))
                else:
                    target.symlink_to(photo)
    return dest


def write_png_folder(
    root: Path,
    classes: list[str],
    per_class: int,
    size: int = 12,
    mode: str = "RGB",
    splits: tuple[str, ...] = ("train", "test"),
    seed: int = 0,
) -> Path:
    """A tiny, learnable image folder: each class has its own mean colour plus noise."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    for split in splits:
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = 40 + 170 * k / max(1, len(classes) - 1)
                arr = np.clip(rng.normal(base, 20, (size, size, channels)), 0, 255).astype(np.uint8)
                Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(d / f"{i}.png")
    return root


def toy_photos(root: Path, run: Path, cache: Path) -> list[str]:
    """Overrides of configs/digits.yaml for a toy CNN on a small photo folder (``write_png_folder``):
    resnet_small at 16 px in batches of 8, no progress bar or TensorBoard: runs of a second or less."""
    return [
        f"run.dir={run}",
        "trainer.progress=off",
        "logging.tensorboard=false",
        "data.source=folder",
        f"data.root={root}",
        f"data.cache_dir={cache}",
        "data.image_size=16",
        "data.batch_size=8",
        "model.name=resnet_small",
        "model.args={widths: [8, 16]}",
    ]


def multi_label_csvs(root: Path, classes: list[str], splits: tuple[str, ...] = ("train", "val")) -> Path:
    """The photos of an image folder again as multi-label data: <split>.csv rows of 0-3 of ``classes``
    each (seeded), for data.source=csv with data.csv.multi_label."""
    rng = np.random.default_rng(0)
    for split in splits:
        rows = ["filepath,label"]
        for path in sorted((root / split).rglob("*.png")):
            labels = [c for c in classes if rng.random() < 0.5]
            rows.append(f"{path.relative_to(root)},{' '.join(labels)}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def png_folder(tmp_path: Path) -> Path:
    return write_png_folder(tmp_path / "imgs", ["cat", "dog", "frog"], per_class=12)


@contextmanager
def one_thread() -> Iterator[None]:
    """Train a tiny model on one CPU thread, then give torch its threads back. Its matrices are too small to
    share out: 150 steps of digits' mlp (1,200 images) took 0.17 s on one thread and 10.5 s on two on this
    shared 2-core VM, where the second thread waits for a core another process holds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_kiln(
    *args: str, cwd: Path | None = None, check: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kiln {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def cifar_mosaics(
    cifar10_dir: Path,
    dest: Path,
    counts: dict[str, int],
    classes: tuple[str, ...] = ("airplane", "automobile", "bird", "cat"),
    seed: int = 0,
) -> Path:
    """Multi-label data from real photos: 2x2 mosaics (64x64 px) of CIFAR-10 images, each labelled with the
    classes it shows (``classes``; a quadrant may hold a gray tile: some mosaics have no label at all).
    Writes dest/<split>/<n>.png and dest/<split>.csv with a `labels` column (names separated by spaces)
    and one 0/1 column per class."""
    rng = np.random.default_rng(seed)
    pools = {c: sorted((cifar10_dir / "train" / c).glob("*.jpg")) for c in classes}
    for split, n in counts.items():
        (dest / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            canvas = np.full((64, 64, 3), 128, np.uint8)
            present = set()
            for q in range(4):
                pick = int(rng.integers(0, len(classes) + 1))
                if pick == len(classes):
                    continue  # a gray tile: no label
                cls = classes[pick]
                photo = pools[cls][int(rng.integers(0, len(pools[cls])))]
                canvas[(q // 2) * 32 : (q // 2) * 32 + 32, (q % 2) * 32 : (q % 2) * 32 + 32] = np.asarray(
                    Image.open(photo).convert("RGB")
                )
                present.add(cls)
            Image.fromarray(canvas).save(dest / split / f"{i}.png")
            rows.append(
                (
                    f"{split}/{i}.png",
                    " ".join(c for c in classes if c in present),
                    *[int(c in present) for c in classes],
                )
            )
        with (dest / f"{split}.csv").open("w") as f:
            f.write("filepath,labels," + ",".join(classes) + "\n")
            f.writelines(",".join(map(str, r)) + "\n" for r in rows)
    return dest
