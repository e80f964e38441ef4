"""Defaults that follow the data (engine/recipe.py), decided from the sample lists before anything is decoded:
a batch that fits a tiny folder, balanced class weights and balanced accuracy for skewed classes, mAP for
multi-label data; an explicit setting always wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.data import plan
from kiln.engine.recipe import follow_the_data
from tests.conftest import ROOT, write_png_folder


def folder(tmp_path: Path, counts: dict[str, int]) -> Path:
    root = tmp_path / "imgs"
    for k, (name, n) in enumerate(counts.items()):
        write_png_folder(root, [name], per_class=n, splits=("train",), seed=k)
    return root


def decided(root: Path, *extra: str):  # type: ignore[no-untyped-def]
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            "data.source=folder",
            f"data.root={root}",
            "data.val_split=0",
            "trainer.checkpoint.monitor=auto",
            *extra,
        ],
    )
    return follow_the_data(cfg, plan(cfg.data), quiet=True)


@pytest.fixture
def skewed(tmp_path: Path) -> Path:
    return folder(tmp_path, {"a": 40, "b": 10})


def test_skewed_classes_are_weighed_balanced(skewed: Path) -> None:
    assert decided(skewed).trainer.class_weights == "balanced"


def test_skewed_classes_keep_the_best_balanced_accuracy(skewed: Path) -> None:
    assert decided(skewed).trainer.checkpoint.monitor == "val_balanced_accuracy"


def test_an_explicit_imbalance_option_wins(skewed: Path) -> None:
    assert decided(skewed, "data.sampler=balanced").trainer.class_weights is None


def test_imbalance_off_trains_as_configured(skewed: Path) -> None:
    assert decided(skewed, "trainer.imbalance=off").trainer.class_weights is None


def test_an_explicit_monitor_wins(skewed: Path) -> None:
    assert decided(skewed, "trainer.checkpoint.monitor=val_loss").trainer.checkpoint.monitor == "val_loss"


def test_balanced_classes_keep_the_best_accuracy(tmp_path: Path) -> None:
    cfg = decided(folder(tmp_path, {"a": 20, "b": 15}))
    assert (cfg.trainer.checkpoint.monitor, cfg.trainer.class_weights) == ("val_acc", None)


def test_a_folder_smaller_than_one_batch_gets_a_batch_of_its_size(tmp_path: Path) -> None:
    assert decided(folder(tmp_path, {"a": 3, "b": 4}), "data.batch_size=32").data.batch_size == 7


def test_the_batch_stays_a_multiple_of_the_processes(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        ["data.source=folder", f"data.root={folder(tmp_path, {'a': 3, 'b': 4})}", "data.val_split=0"],
    )
    assert follow_the_data(cfg, plan(cfg.data), world=2, quiet=True).data.batch_size == 6
