"""Both feeds side by side on a toy network (resnet_small, 16 px, 30 images): a frozen backbone's cached
features train the head exactly as the live images do, with every option that shapes an epoch (the
balanced sampler, class weights, multi-label targets); the solved head is one epoch line that stands for
the frozen epochs, and a run that unfreezes after it continues from the solve. Each run takes under a
second: this file is part of `make test-fast`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.engine.trainer import fit
from tests.conftest import ROOT, multi_label_csvs, one_thread, toy_photos, write_png_folder

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("feeds") / "imgs"
    return write_png_folder(root, CLASSES, per_class=10, size=20, splits=("train", "val"))


@pytest.fixture(scope="module")
def multi_label(photos: Path) -> Path:
    return multi_label_csvs(photos, CLASSES)


def run(root: Path, out: Path, *extra: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            *toy_photos(root, out, out.parent / "cache"),
            "model.freeze=backbone",
            "trainer.epochs=3",
            "data.augment={random_resized_crop: {scale: [0.5, 1]}, hflip: true, views: 2}",
            "optimizer.name=sgd",
            "optimizer.lr=0.1",
            *extra,
        ],
    )
    with one_thread():
        fit(cfg)
    weights = torch.load(out / "checkpoints/last.pt", weights_only=True)["model_state_dict"]
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    return weights, lines


EPOCHS = "trainer.frozen_head=epochs"
LIVE = "trainer.frozen_features=off"
OPTIONS = {
    "shuffle": [],
    "balanced sampler": ["data.sampler=balanced"],
    "class weights": ["trainer.class_weights=balanced"],
}


@pytest.mark.parametrize("option", OPTIONS)
def test_cached_features_train_the_head_as_the_live_images_do(
    photos: Path, tmp_path: Path, option: str
) -> None:
    cached, _ = run(photos, tmp_path / "cached", EPOCHS, *OPTIONS[option])
    live, _ = run(photos, tmp_path / "live", LIVE, *OPTIONS[option])
    assert torch.allclose(cached["fc.weight"], live["fc.weight"], atol=1e-5)


def test_the_balanced_sampler_changes_what_the_cached_head_learns(photos: Path, tmp_path: Path) -> None:
    shuffled, _ = run(photos, tmp_path / "shuffled", EPOCHS)
    balanced, _ = run(photos, tmp_path / "balanced", EPOCHS, "data.sampler=balanced")
    assert not torch.allclose(shuffled["fc.weight"], balanced["fc.weight"], atol=1e-3)


def test_multi_label_cached_features_train_as_the_live_images_do(multi_label: Path, tmp_path: Path) -> None:
    csv = ["data.source=csv", "data.csv.val=val.csv", "data.csv.test=null", "data.csv.multi_label=true"]
    cached, _ = run(multi_label, tmp_path / "cached", EPOCHS, *csv)
    live, _ = run(multi_label, tmp_path / "live", LIVE, *csv)
    assert torch.allclose(cached["fc.weight"], live["fc.weight"], atol=1e-5)


def test_the_solve_is_one_epoch_line_for_the_frozen_epochs(photos: Path, tmp_path: Path) -> None:
    _, lines = run(photos, tmp_path / "solved")
    assert [(m["epoch"], m["solved_epochs"]) for m in lines] == [(3, 3)]


def test_the_solved_head_fits_the_train_features(photos: Path, tmp_path: Path) -> None:
    _, lines = run(photos, tmp_path / "solved")
    assert lines[0]["train_acc"] > 0.9


def test_training_unfreezes_after_the_solve(photos: Path, tmp_path: Path) -> None:
    unfreeze = "trainer.unfreeze={at_epoch: 3, lr_mult: 1.0}"
    solved, lines = run(photos, tmp_path / "lpft", unfreeze)
    frozen, _ = run(photos, tmp_path / "frozen", "trainer.epochs=2")
    assert [m["epoch"] for m in lines] == [2, 3]
    assert not torch.equal(solved["stem.0.weight"], frozen["stem.0.weight"])  # epoch 3 trained the backbone


def test_a_run_resumed_after_the_solve_continues_from_it(photos: Path, tmp_path: Path) -> None:
    # a constant LR: the first part's schedule would end at its own last epoch
    same = [
        "trainer.unfreeze={at_epoch: 3, lr_mult: 1.0}",
        "scheduler.name=none",
        "scheduler.warmup_epochs=0",
    ]
    whole, _ = run(photos, tmp_path / "whole", *same)
    run(photos, tmp_path / "parts", *same, "trainer.epochs=2")
    cfg = load_config(tmp_path / "parts/config.yaml", ["trainer.epochs=3"])
    with one_thread():
        fit(cfg, resume=str(tmp_path / "parts/checkpoints/last.pt"))
    resumed = torch.load(tmp_path / "parts/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    assert torch.allclose(whole["stem.0.weight"], resumed["stem.0.weight"], atol=1e-6)
