"""Every data source: digits' fixed split, image folders, CSV files (bad rows named), torchvision's MNIST and
CIFAR-10 formats, a user's own Dataset (read lazily), grayscale folders and channel conversion."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kiln.config import DataConfig
from kiln.data import build
from kiln.data.sources import list_source
from kiln.data.splits import FileSplit, TensorSplit
from kiln.errors import DataError
from tests.conftest import write_png_folder

CPU = torch.device("cpu")


def test_digits_fixed_split() -> None:
    a, b = list_source(DataConfig()), list_source(DataConfig())
    assert isinstance(a.train, TensorSplit)
    assert a.train.images.dtype == torch.uint8
    assert a.train.images.shape[1:] == (1, 8, 8)
    assert len(a.train) + len(a.test) == 1797
    assert a.test.labels == b.test.labels  # the same split every time
    assert a.classes == [str(i) for i in range(10)]
    assert int(a.train.images.max()) == 255


def test_folder_source(png_folder: Path, tmp_path: Path) -> None:
    cfg = DataConfig(
        source="folder", root=str(png_folder), cache_dir=str(tmp_path / "cache"), val_split=0.25, batch_size=8
    )
    b = build(cfg, seed=0, device=CPU)
    assert b.classes == ["cat", "dog", "frog"]
    assert b.spec.channels == 3
    assert b.spec.size == (12, 12)
    x, y, idx = next(iter(b.train))
    assert x.dtype == torch.uint8
    assert x.shape[1:] == (3, 12, 12)
    assert len(b.train.order.indices()) == 27
    assert len(b.val.order.indices()) == 9
    assert len(b.test.order.indices()) == 36


def test_folder_test_class_not_in_train(png_folder: Path) -> None:
    (png_folder / "test" / "zebra").mkdir()
    Image.new("RGB", (12, 12)).save(png_folder / "test" / "zebra" / "0.png")
    with pytest.raises(DataError, match="zebra"):
        list_source(DataConfig(source="folder", root=str(png_folder)))


def test_folder_empty_class(png_folder: Path) -> None:
    (png_folder / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder has no images"):
        list_source(DataConfig(source="folder", root=str(png_folder)))


def _csv(root: Path, name: str, rows: list[tuple[str, str]], header: str = "filepath,label") -> None:
    (root / name).write_text(header + "\n" + "".join(f"{p},{lab}\n" for p, lab in rows))


def test_csv_source_names_and_ints(png_folder: Path, tmp_path: Path) -> None:
    files = sorted((png_folder / "train").rglob("*.png"))
    rows = [(str(f.relative_to(png_folder)), f.parent.name) for f in files]
    _csv(png_folder, "train.csv", rows)
    _csv(png_folder, "test.csv", rows[:5])
    raw = list_source(DataConfig(source="csv", root=str(png_folder)))
    assert raw.classes == ["cat", "dog", "frog"]
    assert isinstance(raw.train, FileSplit)
    assert raw.train.labels[:3] == [0, 0, 0]
    assert len(raw.test) == 5
    _csv(png_folder, "train.csv", [(p, str(["cat", "dog", "frog"].index(c))) for p, c in rows])
    _csv(png_folder, "test.csv", [])
    (png_folder / "test.csv").write_text("filepath,label\n")
    with pytest.raises(DataError, match="test.csv: no rows"):
        list_source(DataConfig(source="csv", root=str(png_folder)))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("train/cat/0.png,bird", r"test.csv:3: label 'bird' is not one of"),
        ("../outside.png,cat", r"train.csv:3: path '../outside.png' is empty or outside the data root"),
        ("train/cat/missing.png,cat", r"train.csv:3: image file not found"),
        ("train/cat/2.png,cat,extra", r"train.csv:3: more fields than the header's 2 \(extra: 'extra'\)"),
    ],
)
def test_csv_bad_rows_are_named(png_folder: Path, row: str, message: str) -> None:
    name = "test.csv" if "bird" in row else "train.csv"
    (png_folder / "train.csv").write_text("filepath,label\ntrain/cat/1.png,cat\ntrain/dog/1.png,dog\n")
    (png_folder / name).write_text(f"filepath,label\ntrain/cat/1.png,cat\n{row}\n")
    (png_folder.parent / "outside.png").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        list_source(DataConfig(source="csv", root=str(png_folder)))


def test_csv_missing_column(png_folder: Path) -> None:
    (png_folder / "train.csv").write_text("path,cls\ntrain/cat/0.png,cat\n")
    with pytest.raises(DataError, match=r"no column \['filepath', 'label'\]"):
        list_source(DataConfig(source="csv", root=str(png_folder)))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = {3: 0x0803, 1: 0x0801}[arr.ndim]
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


@pytest.mark.parametrize(("source", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_format(tmp_path: Path, source: str, folder: str) -> None:
    """MNIST/FashionMNIST written in their own IDX format, read by torchvision's own class
    (download=False)."""
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    r = list_source(DataConfig(source=source, root=str(tmp_path)))
    assert r.train.images.shape == (20, 1, 28, 28)
    assert r.test.images.shape == (8, 1, 28, 28)
    assert r.train.labels[:3] == [0, 1, 2]
    assert len(r.classes) == 10


def test_torchvision_cifar10_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CIFAR-10 in its python pickle-batch format. torchvision checks the official archive's md5 sums, which
    hand-written batches cannot match, so only that check is bypassed; the reading code runs for real."""
    import torchvision

    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file()
    )
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (d / name).write_bytes(pickle.dumps(batch))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    r = list_source(DataConfig(source="cifar10", root=str(tmp_path)))
    assert r.train.images.shape == (20, 3, 32, 32)
    assert r.test.images.shape == (4, 3, 32, 32)
    assert r.classes == classes


def test_torchvision_missing_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.download=true"):
        list_source(DataConfig(source="mnist", root=str(tmp_path)))


class TinyDataset(torch.utils.data.Dataset):
    classes = ["a", "b"]

    def __init__(self, split: str = "train", n: int = 16) -> None:
        self.n = n if split == "train" else 6

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 6, 6), i % 2 * 200, dtype=torch.uint8), i % 2


def test_custom_dataset_streams() -> None:
    cfg = DataConfig(
        source="custom",
        dataset="tests.data.test_sources:TinyDataset",
        dataset_args={"n": 20},
        batch_size=4,
        val_split=0.2,
        num_workers=0,
    )
    b = build(cfg, seed=0, device=CPU)
    assert b.classes == ["a", "b"]
    assert b.spec.channels == 1
    xs = [x for x, _, _ in b.train]
    assert sum(len(x) for x in xs) == 16
    assert xs[0].dtype == torch.uint8
    assert len(set(b.val.ids)) == 4
    assert all(i.startswith("TinyDataset[") for i in b.val.ids)  # the items' own names


class CountingDataset(TinyDataset):
    reads = 0

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        CountingDataset.reads += 1
        return super().__getitem__(i)


def test_building_a_custom_dataset_reads_no_more_than_it_needs() -> None:
    CountingDataset.reads = 0
    cfg = DataConfig(
        source="custom",
        dataset="tests.data.test_sources:CountingDataset",
        dataset_args={"n": 20},
        batch_size=4,
        val_split=0,
        num_workers=0,
    )
    b = build(cfg, seed=0, device=CPU)
    assert CountingDataset.reads <= 2  # the first item, to learn the image size: labels are read when asked
    assert b.train.labels.tolist() == [i % 2 for i in range(20)]
    assert CountingDataset.reads > 20


def test_custom_dataset_bad_name() -> None:
    with pytest.raises(Exception, match="did you mean 'TinyDataset'"):
        list_source(DataConfig(source="custom", dataset="tests.data.test_sources:TinyDatset"))


def test_grayscale_folder_and_channel_conversion(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "g", ["a", "b"], per_class=4, mode="L")
    b = build(
        DataConfig(source="folder", root=str(root), channels=3, cache_dir="", batch_size=4),
        seed=0,
        device=CPU,
    )
    assert b.spec.channels == 3
    assert next(iter(b.train))[0].shape[1] == 3
    d = build(DataConfig(channels=3, image_size=16), seed=0, device=CPU)
    assert next(iter(d.train))[0].shape[1:] == (3, 16, 16)
