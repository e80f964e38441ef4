"""Shared by the export, inference and serving tests: tiny models trained once per session (1 epoch, small
data), a multi-label model on mosaics of real photos, and a model whose forward branches on tensor values.

The training cache lives here rather than in fixtures so every test module reuses the same checkpoints
(a session fixture imported into two modules would run twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from kiln.export.base import ExportOptions, TritonOptions
from tests.conftest import ROOT, cifar_mosaics, write_png_folder

DIGITS = ROOT / "configs/digits.yaml"
QUIET = ["trainer.progress=off", "logging.tensorboard=false", "trainer.epochs=1"]

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_NAMES = ", ".join(f"'{digit}': {name}" for digit, name in enumerate(DIGIT_WORDS))

# name -> overrides on top of configs/digits.yaml; "{rgb}" is replaced by a folder of 32x32 RGB PNGs
MODELS: dict[str, list[str]] = {
    "lenet": ["data.train_limit=300"],
    "mlp": ["model.name=mlp", "model.args={hidden: [32]}", "data.train_limit=300"],
    "resnet_small": [
        "model.name=resnet_small",
        "model.args={widths: [8, 16]}",
        "data.source=folder",
        "data.root={rgb}",
        "data.image_size=32",
        "data.batch_size=8",
    ],
    # squeezenet1_1: a real torchvision network that exports in ~3 s (mobilenet_v3_small takes ~10 s to ONNX)
    "torchvision": [
        "model.name=torchvision:squeezenet1_1",
        "data.channels=3",
        "data.source=folder",
        "data.root={rgb}",
        "data.image_size=32",
        "data.batch_size=8",
    ],
    "gated": ["model.name=tests.export:gated_net", "data.train_limit=200"],
    # display names beside the class ids (data.class_names): "0" is shown as "zero", and so on
    "named": ["data.train_limit=300", f"data.class_names={{{DIGIT_NAMES}}}"],
}
MULTI_LABEL_CLASSES = ["airplane", "automobile", "bird", "cat"]
MULTI_LABEL_NAMES = {"airplane": "plane", "automobile": "car"}  # bird and cat keep their ids as names

_CHECKPOINTS: dict[str, Path] = {}
_EXPORTS: dict[tuple[str, ...], tuple[dict[str, Any], Path]] = {}


def trained(key: str, base: Path) -> Path:
    """The best.pt of a 1-epoch run of MODELS[key], trained on first use under ``base``."""
    if key not in _CHECKPOINTS:
        from kiln.config import load_config
        from kiln.engine.trainer import fit

        rgb = base / "rgb"
        if not rgb.exists():
            write_png_folder(rgb, ["cat", "dog", "frog"], per_class=8, size=32)
        overrides = [o.replace("{rgb}", str(rgb)) for o in MODELS[key]]
        run = base / key
        fit(load_config(DIGITS, [f"run.dir={run}", f"data.cache_dir={base / 'cache'}", *QUIET, *overrides]))
        _CHECKPOINTS[key] = run / "checkpoints" / "best.pt"
    return _CHECKPOINTS[key]


def trained_multilabel(cifar10_dir: Path, base: Path) -> Path:
    """The best.pt of a small multi-label resnet_small (2 epochs) on 2x2 mosaics of real CIFAR-10 photos,
    labelled with the classes they show; thresholds tuned on val when training ended."""
    if "multilabel" not in _CHECKPOINTS:
        from kiln.config import load_config
        from kiln.engine.trainer import fit

        mosaics = cifar_mosaics(cifar10_dir, base / "mosaics", {"train": 320, "val": 120, "test": 40})
        names = "{" + ", ".join(f"{k}: {v}" for k, v in MULTI_LABEL_NAMES.items()) + "}"
        run = base / "multilabel"
        overrides = [
            *(f"run.dir={run}", f"data.cache_dir={base / 'cache'}", *QUIET, "trainer.epochs=2"),
            *("data.source=csv", f"data.root={mosaics}", "data.csv.val=val.csv", "data.csv.test=test.csv"),
            *("data.csv.label_column=labels", "data.csv.multi_label=true", f"data.class_names={names}"),
            *("model.name=resnet_small", "model.args={widths: [8, 16]}", "data.batch_size=32"),
            *("optimizer.lr=0.003", "trainer.checkpoint.monitor=val_map"),
        ]
        fit(load_config(DIGITS, overrides))
        _CHECKPOINTS["multilabel"] = run / "checkpoints" / "best.pt"
    return _CHECKPOINTS["multilabel"]


def options(
    name: str | None = None,
    method: str = "trace",
    backend: str = "torchscript",
    max_batch_size: int = 16,
    allow_tracer_warnings: bool = False,
) -> ExportOptions:
    """The ExportOptions the tests vary (what `kiln export`'s arguments build)."""
    triton = TritonOptions(backend=backend)
    return ExportOptions(name, max_batch_size, method, allow_tracer_warnings, triton)


def exported(key: str, fmt: str, base: Path, **opts: Any) -> tuple[dict[str, Any], Path]:
    """(report, out dir) of ``kiln export`` of MODELS[key] in ``fmt``, written on first use under ``base``;
    ``opts``: those of ``options``."""
    cache_key = (key, fmt, *(f"{k}={v}" for k, v in sorted(opts.items())))
    if cache_key not in _EXPORTS:
        from kiln.export.run import export_checkpoint

        out = base / "exports" / "-".join(cache_key)
        checkpoint = _CHECKPOINTS["multilabel"] if key == "multilabel" else trained(key, base)
        _EXPORTS[cache_key] = export_checkpoint(checkpoint, fmt, out, opts=options(**opts)), out
    return _EXPORTS[cache_key]


class GatedNet(nn.Module):
    """Two heads; which one runs depends on the input's mean brightness: data-dependent control flow."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        n = in_channels * image_size[0] * image_size[1]
        self.bright = nn.Linear(n, num_classes)
        self.dark = nn.Linear(n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        if x.mean() > 0.5:  # normalised digits average ~0; their inverted images ~ +1.9
            return self.bright(x)
        return self.dark(x)


def gated_net(num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (8, 8)) -> nn.Module:
    return GatedNet(num_classes, in_channels, tuple(image_size))


def write_predict_images(root: Path) -> Path:
    """A PNG, a JPEG in a subfolder, a corrupt .png and a text file the folder walk must skip."""
    rng = np.random.default_rng(1)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(
        root / "sub" / "b.jpg", quality=90
    )
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    (root / "notes.txt").write_text("not an image")
    return root
