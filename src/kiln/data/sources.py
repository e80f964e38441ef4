"""Data sources: each lists samples (or hands over arrays it already has) and class names as ``Split``s.

Decoding, caching, splitting and loading are shared (``splits.py``, ``cache.py``, ``loaders.py``). A new
source is one function registered with ``@register_source("name")`` (here, or in a user's module listed
under ``imports:``); ``data.source`` names it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.config import DataConfig
from kiln.console import log
from kiln.data.splits import DatasetSplit, FileSplit, RawSplits, TensorSplit
from kiln.errors import DataError
from kiln.registry import DATASETS, SOURCES, register_source

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def data_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else Path("data") / cfg.source


@register_source("digits")
def digits(cfg: DataConfig) -> RawSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), with a fixed stratified test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # pixel values are 0..16; scale to the 0..255 uint8 range every other source uses
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    idx = np.arange(len(labels))
    # random_state fixed (not run.seed) so the test set is the same in every run and comparable
    tr, te = train_test_split(idx, test_size=cfg.test_split, random_state=0, stratify=bunch.target)
    full = TensorSplit(images, labels, [f"digits[{i}]" for i in idx])
    return RawSplits(
        full.subset(tr.tolist()), None, full.subset(te.tolist()), [str(c) for c in bunch.target_names]
    )


_TORCHVISION = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
}


@register_source("cifar10")
@register_source("cifar100")
@register_source("mnist")
@register_source("fashion_mnist")
def torchvision_dataset(cfg: DataConfig) -> RawSplits:
    """CIFAR-10/100, MNIST, FashionMNIST through torchvision's own classes and `download` flag."""
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[cfg.source])
    root = data_root(cfg)
    sets = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=cfg.download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
            raise DataError(
                f"data.source={cfg.source}: not found under {root} ({e}). Set data.download=true to fetch "
                "it, "
                "or data.root to a folder that holds it"
            ) from None
        except OSError as e:  # no network while downloading
            raise DataError(
                f"data.source={cfg.source}: download into {root} failed ({e}); check the network "
                "or copy the dataset there and set data.download=false"
            ) from None
        data = torch.as_tensor(np.asarray(ds.data))
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # -> N,C,H,W
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        sets.append(
            TensorSplit(images.contiguous(), labels, [f"{cfg.source}[{i}]" for i in range(len(labels))])
        )
    return RawSplits(sets[0], None, sets[1], list(ds.classes))


def _list_folder(
    split_dir: Path, classes: list[str] | None, problems: list[str] | None, others: list[Path]
) -> tuple[FileSplit, list[str]]:
    """A split folder's images by class folder. ``problems``: None raises at the first problem, a list
    collects them all (kiln check-data, data.on_bad_sample=skip). Files that are not images go to
    ``others``."""
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir}: class folders {unknown[:10]} are not in the train classes {classes[:20]}"
        )
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in found:
        entries = sorted(p for p in (split_dir / c).iterdir() if not p.name.startswith("."))
        files = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
        others += [p for p in entries if p.suffix.lower() not in IMAGE_EXTENSIONS and p.is_file()]
        if not files:
            msg = f"{split_dir / c}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            if problems is None:
                raise DataError(msg)
            problems.append(msg)
        paths += files
        labels += [index[c]] * len(files)
    return FileSplit(paths, labels, [str(p) for p in paths]), classes


def note_others(others: list[Path], root: Path) -> str | None:
    """One line about files in class folders that are not images (left out), or None."""
    if not others:
        return None
    kinds = sorted({p.suffix.lower() or "(no extension)" for p in others})
    return (
        f"{root}: left out {len(others)} file(s) that are not images ({', '.join(kinds[:6])}), "
        f"e.g. {others[0]}"
    )


@register_source("folder")
def folder(cfg: DataConfig) -> RawSplits:
    """An image folder: ROOT/train/<class>/*.png, ROOT/test/<class>/..., optional ROOT/val/<class>/..."""
    root = data_root(cfg)
    if not (root / "train").is_dir():
        raise DataError(f"data.root: {root} has no train/ folder (expected {root}/train/<class>/<image>)")
    problems: list[str] | None = [] if cfg.on_bad_sample == "skip" else None
    others: list[Path] = []
    train, classes = _list_folder(root / "train", None, problems, others)
    if not classes:
        raise DataError(f"{root / 'train'}: no class folders")
    val = _list_folder(root / "val", classes, problems, others)[0] if (root / "val").is_dir() else None
    test = _list_folder(root / "test", classes, problems, others)[0] if (root / "test").is_dir() else None
    note = note_others(others, root)
    if note:
        log(f"kiln: {note}")
    return RawSplits(train, val, test, classes, problems or [], notes=[note] if note else [])


@register_source("csv")
def csv_source(cfg: DataConfig) -> RawSplits:
    """An image directory plus CSV annotations: single- or multi-label (``csv_source.py``)."""
    from kiln.data.csv_source import csv_source as read

    return read(cfg, data_root(cfg))


@register_source("custom")
def custom(cfg: DataConfig) -> RawSplits:
    """A user's Dataset class, `module:ClassName`; called with split=/train= when it takes them."""
    cls = DATASETS.get(cfg.dataset or "")  # a name from @kiln.register_dataset, or "module:ClassName"
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = dict(cfg.dataset_args)
    if "root" in params and "root" not in kwargs:
        kwargs["root"] = str(data_root(cfg))

    def make(split: str) -> Any:
        extra = (
            {"split": split}
            if "split" in params
            else {"train": split == "train"}
            if "train" in params
            else {}
        )
        try:
            return cls(**kwargs, **extra)
        except Exception as e:
            raise DataError(f"data.dataset: {cfg.dataset}({kwargs | extra}) failed: {e}") from None

    if "split" in params or "train" in params:
        train, test = make("train"), make("test")
    else:
        train, test = make("train"), None
    classes = getattr(train, "classes", None)
    if classes is None:
        n = int(max(int(train[i][1]) for i in range(len(train)))) + 1
        classes = [str(i) for i in range(n)]
    return RawSplits(
        DatasetSplit(train), None, DatasetSplit(test) if test is not None else None, [str(c) for c in classes]
    )


def list_source(cfg: DataConfig) -> RawSplits:
    """The splits the config's data.source lists (an unknown name: the registry's one-line error)."""
    return SOURCES.get(cfg.source)(cfg)
