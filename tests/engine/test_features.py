"""A frozen backbone computed once per (image, view) trains the head to the same weights as full forward
passes over the same views, and the run switches back to full passes when it unfreezes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.engine.trainer import fit
from tests.conftest import ROOT, toy_photos, write_png_folder

pytestmark = pytest.mark.slow  # every test trains two or more multi-epoch runs


def _run(tmp_path: Path, name: str, *extra: str) -> dict[str, torch.Tensor]:
    root = tmp_path / "imgs"
    if not root.exists():
        write_png_folder(root, ["a", "b", "c"], per_class=10, size=20, splits=("train", "val"))
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            *toy_photos(root, tmp_path / name, tmp_path / "cache"),
            "model.freeze=backbone",
            "trainer.epochs=4",
            "data.augment={random_resized_crop: {scale: [0.5, 1]}, hflip: true, views: 2}",
            "optimizer.name=sgd",
            "optimizer.lr=0.1",
            "scheduler.name=cosine",
            "trainer.frozen_head=epochs",
            *extra,
        ],
    )
    fit(cfg)
    return torch.load(tmp_path / name / "checkpoints/last.pt", weights_only=True)["model_state_dict"]


def test_cached_features_train_the_head_as_full_passes_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cached = _run(tmp_path, "cached")
    assert "features are computed once per image for 2 augmentation views" in capsys.readouterr().out
    live = _run(tmp_path, "live", "trainer.frozen_features=off")
    assert torch.allclose(cached["fc.weight"], live["fc.weight"], atol=1e-5)
    assert torch.allclose(cached["fc.bias"], live["fc.bias"], atol=1e-5)
    assert all(
        torch.equal(cached[k], live[k]) for k in cached if not k.startswith("fc.")
    )  # frozen, BN included
    a = [json.loads(s) for s in (tmp_path / "cached/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(s) for s in (tmp_path / "live/metrics.jsonl").read_text().splitlines()]
    assert [round(m["val_acc"], 6) for m in a] == [round(m["val_acc"], 6) for m in b]


def test_unfreezing_switches_back_to_full_passes(tmp_path: Path) -> None:
    weights = _run(tmp_path, "unfreeze", "trainer.unfreeze={at_epoch: 3, lr_mult: 0.1}")
    start = _run(tmp_path, "frozen", "trainer.epochs=2")
    assert not torch.equal(
        weights["stem.0.weight"], start["stem.0.weight"]
    )  # the backbone trained from epoch 3


def test_features_of_streamed_photos_equal_those_of_the_cache(tmp_path: Path) -> None:
    # the statistics given: the stream does not measure them (it would decode everything first)
    same = ["trainer.epochs=2", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"]
    cached = _run(tmp_path, "cached", *same)
    streamed = _run(tmp_path, "streamed", *same, "data.loader=stream", "data.num_workers=0")
    assert torch.allclose(cached["fc.weight"], streamed["fc.weight"], atol=1e-5)
