"""Every combination of the head's start, the sampler, class weights, multi-label data and the frozen or
fine-tuned recipe either trains or is refused before anything is decoded, with one line (a toy network
whose "pretrained" weights file has a 5-class head, on 30 tiny photos)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.engine.trainer import fit
from kiln.errors import KilnError
from kiln.models import build
from tests.conftest import ROOT, multi_label_csvs, one_thread, toy_photos, write_png_folder

pytestmark = pytest.mark.slow  # 64 short training runs

CLASSES = ["a", "b", "c"]
HEADS = ["auto", "random", "probe", "pretrained_classes"]
SAMPLERS = ["shuffle", "balanced"]
WEIGHTS = ["null", "balanced"]
LABELS = ["single", "multi"]
RECIPES = ["frozen", "fine-tune"]
REFUSED = {("balanced", "multi"): "data.sampler=balanced draws each class equally often"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("combinations")
    root = write_png_folder(base / "imgs", CLASSES, per_class=10, size=20, splits=("train", "val"))
    multi_label_csvs(root, CLASSES)
    model, _ = build("resnet_small", num_classes=5, in_channels=3, image_size=(16, 16), widths=[8, 16])
    torch.save(model.state_dict(), base / "pretrained.pt")
    return root, base / "pretrained.pt"


@pytest.mark.parametrize(
    ("head", "sampler", "weights", "labels", "recipe"),
    list(itertools.product(HEADS, SAMPLERS, WEIGHTS, LABELS, RECIPES)),
)
def test_it_trains_or_is_refused_in_one_line(
    setup: tuple[Path, Path], tmp_path: Path, head: str, sampler: str, weights: str, labels: str, recipe: str
) -> None:
    root, pretrained = setup
    overrides = [
        *toy_photos(root, tmp_path / "run", tmp_path / "cache"),
        "data.augment={random_resized_crop: {scale: [0.5, 1]}, hflip: true}",
        f"model.pretrained={pretrained}",
        f"model.head_init={head}",
        f"data.sampler={sampler}",
        f"trainer.class_weights={weights}",
        "trainer.epochs=2",
    ]
    if labels == "multi":
        overrides += [
            "data.source=csv",
            "data.csv.val=val.csv",
            "data.csv.test=null",
            "data.csv.multi_label=true",
        ]
    if recipe == "frozen":
        overrides.append("model.freeze=backbone")
    cfg = load_config(ROOT / "configs/digits.yaml", overrides)
    refusal = REFUSED.get((sampler, labels))
    with one_thread():
        if refusal is not None:
            with pytest.raises(KilnError, match=refusal) as refused:
                fit(cfg)
            assert "\n" not in str(refused.value)
            assert not (tmp_path / "cache").exists()  # refused before any image was decoded
            return
        fit(cfg)
    lines = [json.loads(s) for s in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["epoch"] == 2
