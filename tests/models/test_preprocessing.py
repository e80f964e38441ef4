"""Pretrained weights carry their preprocessing: a safetensors file's metadata, a kiln checkpoint's record,
timm's pretrained_cfg, torchvision's weights; the config's own values win; from scratch: measured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kiln import checkpoint as ckpt
from kiln.config import DataConfig, ModelConfig
from kiln.data import Preset, build, image_spec
from kiln.data.sources import list_source
from kiln.errors import KilnError
from kiln.models.preprocessing import weights_preprocessing
from tests.conftest import write_png_folder


def test_safetensors_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(
        {"w": torch.zeros(1)},
        str(path),
        metadata={
            "input_size": "3,192,160",
            "crop_pct": "0.9",
            "interpolation": "bicubic",
            "mean": "0.5,0.4,0.3",
            "std": "0.2,0.2,0.2",
        },
    )
    got = weights_preprocessing(ModelConfig(name="lenet", pretrained=str(path)))
    assert got == {
        "source": "w.safetensors (safetensors metadata)",
        "image_size": (192, 160),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.2, 0.2),
    }


def _checkpoint(path: Path, in_channels: int) -> None:
    """A checkpoint whose recipe records 32x32 images of ``in_channels`` with one mean and std."""
    record = {
        "in_channels": in_channels,
        "image_size": [32, 32],
        "mean": [0.1],
        "std": [0.3],
        "resize": "none",
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    ckpt.save({"model_state_dict": {}, "recipe": {"preprocess": record}}, path)


def test_kiln_checkpoint_record_and_library_defaults(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "best.pt", in_channels=1)
    got = weights_preprocessing(ModelConfig(name="lenet", pretrained=str(tmp_path / "best.pt")))
    assert got == {
        "source": "best.pt (kiln checkpoint)",
        "image_size": (32, 32),
        "mean": (0.1,),
        "std": (0.3,),
    }
    tv = weights_preprocessing(ModelConfig(name="torchvision:resnet18", pretrained=True))
    assert tv is not None
    assert tv["mean"] == (0.485, 0.456, 0.406)
    assert tv["crop_pct"] == 224 / 256
    assert "ResNet18_Weights.IMAGENET1K_V1" in tv["source"]
    pytest.importorskip("timm", reason="timm is an optional extra")
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pth")  # a state_dict with no record of its own
    timm_cfg = weights_preprocessing(
        ModelConfig(name="timm:tf_efficientnet_lite0", pretrained=str(tmp_path / "plain.pth"))
    )
    assert timm_cfg is not None
    assert timm_cfg["mean"] == (0.5, 0.5, 0.5)
    assert timm_cfg["interpolation"] == "bicubic"
    assert (
        timm_cfg["source"]
        == "timm's pretrained_cfg for tf_efficientnet_lite0 (the weights file has no preprocessing record)"
    )
    assert weights_preprocessing(ModelConfig(name="lenet")) is None  # from scratch


def test_the_config_wins_over_the_weights_and_scratch_measures(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=6, size=20, splits=("train", "val"))
    preset = Preset("w", (16, 16), 0.8, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cfg = DataConfig(source="folder", root=str(root), batch_size=4, cache_dir=str(tmp_path / "c"))
    spec = image_spec(cfg, list_source(cfg).train, preset)
    assert spec.size == (16, 16)  # the weights' values, the config setting none
    assert spec.resize == "crop"
    assert spec.crop_pct == 0.8
    assert spec.interpolation == "bicubic"
    mine = image_spec(
        cfg.model_copy(update={"image_size": 12, "crop_pct": 1.0}), list_source(cfg).train, preset
    )
    assert mine.size == (12, 12)  # the config's own values win
    assert mine.crop_pct == 1.0
    assert build(cfg, 0, torch.device("cpu"), preset=preset).transform.mean == [0.5, 0.5, 0.5]
    measured = build(cfg, 0, torch.device("cpu")).transform.mean
    assert measured != [0.5, 0.5, 0.5]
    assert 0.1 < measured[0] < 0.9


def test_a_damaged_checkpoint_record_is_one_line_naming_the_file(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "best.pt", in_channels=3)  # 1 mean for 3 channels
    with pytest.raises(KilnError, match=r"model.pretrained: .*best.pt: its preprocessing record: mean/std"):
        weights_preprocessing(ModelConfig(name="lenet", pretrained=str(tmp_path / "best.pt")))
