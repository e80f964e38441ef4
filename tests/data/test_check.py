"""`kiln check-data` lists every problem of the whole dataset at once, says what it left out, and shows
the class balance."""

from __future__ import annotations

from pathlib import Path

from kiln.config import load_config
from kiln.data.check import check
from tests.conftest import ROOT, write_png_folder


def _cfg(root: Path):  # type: ignore[no-untyped-def]
    return load_config(
        ROOT / "configs/digits.yaml", ["data.source=folder", f"data.root={root}", "data.batch_size=4"]
    )


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b", "c"], per_class=6)
    (root / "train/b").mkdir(exist_ok=True)
    for p in (root / "train/b").iterdir():
        p.unlink()  # an empty class folder: fatal for training, one line here
    (root / "train/a/0.png").write_bytes(b"not a png")
    (root / "test/c/1.png").write_bytes(b"")
    report = check(_cfg(root))
    assert any("train/b: class folder has no images" in p for p in report.problems)
    assert any("0.png: cannot read image" in p for p in report.problems)
    assert any("1.png: cannot read image" in p for p in report.problems)


def test_files_that_are_not_images_are_named(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=6)
    (root / "train/a/notes.txt").write_text("taken on a cloudy day")
    report = check(_cfg(root))
    assert "left out 1 file(s) that are not images (.txt), e.g." in report.text
    assert "notes.txt" in report.text


def _row(report_text: str, split: str) -> list[str]:
    return next(line.split() for line in report_text.splitlines() if line.split()[:1] == [split])


def test_multi_label_counts_are_the_images_carrying_each_label(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["x"], per_class=6, splits=("train",))
    rows = ["train/x/0.png,cat dog", "train/x/1.png,dog", "train/x/2.png,", "train/x/3.png,cat"]
    (root / "train.csv").write_text("filepath,labels\n" + "\n".join(rows) + "\n")
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            "data.source=csv",
            f"data.root={root}",
            "data.csv.test=null",
            "data.csv.label_column=labels",
            "data.csv.multi_label=true",
            "data.val_split=0",
            "data.batch_size=2",
        ],
    )
    report = check(cfg)
    assert _row(report.text, "train") == ["train", "4", "2", "2"]
    assert report.problems == []


def test_a_class_missing_from_an_evaluation_split_is_a_warning(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b", "c"], per_class=6)
    for p in (root / "test/c").iterdir():
        p.unlink()
    (root / "test/c").rmdir()
    report = check(_cfg(root))
    assert any("test: no image of ['c']" in w for w in report.warnings)
