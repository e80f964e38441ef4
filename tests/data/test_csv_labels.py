"""The csv source's labels: one class, several names in one cell, or one 0/1 column per class; every bad
row named file.csv:row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln.config import DataConfig
from kiln.data import plan
from kiln.errors import DataError
from tests.conftest import write_png_folder


def _folder(tmp_path: Path, rows: list[str], header: str = "filepath,labels") -> Path:
    root = write_png_folder(tmp_path / "imgs", ["x"], per_class=6, splits=("train",))
    (root / "train.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return root


def _cfg(root: Path, **csv: object) -> DataConfig:
    return DataConfig(
        source="csv", root=str(root), val_split=0, csv={"test": None, "label_column": "labels", **csv}
    )


def test_names_in_one_cell_become_a_multi_hot_row(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["train/x/0.png,cat dog", "train/x/1.png,dog", "train/x/2.png,"])
    data = plan(_cfg(root, multi_label=True))
    assert data.classes == ["cat", "dog"]
    assert data.splits.train.label_tensor().tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]


def test_a_separator_of_your_choice(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["train/x/0.png,cat;dog", "train/x/1.png,dog"])
    assert plan(_cfg(root, multi_label=True, label_separator=";")).classes == ["cat", "dog"]


def test_one_column_per_class(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["train/x/0.png,1,0", "train/x/1.png,1,1"], header="filepath,cat,dog")
    data = plan(_cfg(root, label_column=["cat", "dog"]))
    assert data.multi_label
    assert data.splits.train.label_tensor().tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_a_one_hot_cell_that_is_not_0_or_1_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["train/x/0.png,1,0", "train/x/1.png,2,1"], header="filepath,cat,dog")
    with pytest.raises(DataError, match=r"train.csv:3: column 'cat' holds '2'"):
        plan(_cfg(root, label_column=["cat", "dog"]))


def test_a_val_label_not_in_train_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["train/x/0.png,cat", "train/x/1.png,dog"])
    (root / "val.csv").write_text("filepath,labels\ntrain/x/2.png,cat\ntrain/x/3.png,zebra cat\n")
    with pytest.raises(DataError, match=r"val.csv:3: label 'zebra' is not one of the 2 train classes"):
        plan(_cfg(root, multi_label=True, val="val.csv"))


def test_counts_are_images_per_label(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["train/x/0.png,cat dog", "train/x/1.png,dog", "train/x/2.png,"])
    assert plan(_cfg(root, multi_label=True)).counts() == [1, 2]


def test_single_label_rows_stay_class_indices(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["train/x/0.png,cat", "train/x/1.png,dog"])
    data = plan(_cfg(root))
    assert not data.multi_label
    assert torch.equal(data.splits.train.label_tensor(), torch.tensor([0, 1]))
