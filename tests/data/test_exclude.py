"""data.exclude: images left out of every split by path, from a text file or a CSV with a path column (the
lists `kiln audit` writes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import DataConfig
from kiln.data import DataPlan, plan
from kiln.errors import DataError
from tests.conftest import write_png_folder


def folder(tmp_path: Path) -> Path:
    return write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=6, size=16, splits=("train", "val"))


def planned(tmp_path: Path, name: str, text: str) -> DataPlan:
    """The folder's plan with data.exclude naming a file ``name`` of ``text`` ({root}: the folder)."""
    root = folder(tmp_path)
    listed = tmp_path / name
    listed.write_text(text.format(root=root))
    return plan(DataConfig(source="folder", root=str(root), exclude=str(listed)))


def test_a_text_file_of_paths_leaves_them_out_of_train(tmp_path: Path) -> None:
    data_plan = planned(tmp_path, "exclude.txt", "{root}/train/a/0.png\n{root}/train/b/3.png\n")
    assert len(data_plan.splits.train) == 10


def test_a_csv_path_column_leaves_them_out_of_val(tmp_path: Path) -> None:
    data_plan = planned(tmp_path, "label_issues.csv", "path,split,given\n{root}/val/a/1.png,val,a\n")
    assert len(data_plan.splits.val) == 11


def test_relative_paths_are_read_from_the_lists_folder(tmp_path: Path) -> None:
    data_plan = planned(tmp_path, "exclude.txt", "imgs/train/a/0.png\n")
    assert len(data_plan.splits.train) == 11


def test_the_log_says_how_many_left_each_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = folder(tmp_path)
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"{root / 'train/a/0.png'}\n{tmp_path / 'nowhere.png'}\n")
    plan(DataConfig(source="folder", root=str(root), exclude=str(listed)))
    assert "left out 1 train, 0 val image(s) of the 2 it lists" in capsys.readouterr().out


def test_a_missing_list_is_one_line_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.exclude: .*missing.txt does not exist"):
        plan(DataConfig(source="folder", root=str(folder(tmp_path)), exclude=str(tmp_path / "missing.txt")))


def test_a_csv_without_a_path_column_is_refused(tmp_path: Path) -> None:
    listed = tmp_path / "x.csv"
    listed.write_text("file,label\na.png,a\n")
    with pytest.raises(DataError, match="has no `path` column"):
        plan(DataConfig(source="folder", root=str(folder(tmp_path)), exclude=str(listed)))
