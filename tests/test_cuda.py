"""The CUDA paths: bf16 autocast, channels_last, torch.compile and the whole dataset resident on the GPU.
Skipped where there is no CUDA device (this project's CI); `make bench-gpu` runs them on a GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.data import build
from kiln.engine.trainer import fit
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: `make bench-gpu` runs these on a GPU machine",
    ),
]


def _fit(tmp_path: Path, *extra: str) -> list[dict]:
    fit(
        load_config(
            ROOT / "configs/digits.yaml",
            [
                f"run.dir={tmp_path}",
                "trainer.progress=off",
                "run.device=cuda",
                "logging.tensorboard=false",
                "trainer.epochs=4",
                *extra,
            ],
        )
    )
    return [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "extra",
    [
        ["trainer.precision=bf16"],
        ["trainer.precision=bf16", "trainer.channels_last=on", "model.name=resnet_small"],
        ["trainer.compile=true", "trainer.precision=bf16"],
        ["trainer.precision=fp16"],
    ],
)
def test_cuda_training_learns(tmp_path: Path, extra: list[str]) -> None:
    m = _fit(tmp_path, *extra)
    assert m[-1]["train_loss"] < m[0]["train_loss"]
    assert m[-1]["val_acc"] > 0.8


def test_the_dataset_lives_on_the_gpu(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs/digits.yaml")
    data = build(cfg.data, 0, torch.device("cuda"))
    assert data.train.images.device.type == "cuda"  # type: ignore[union-attr]
    x, y, _ = next(iter(data.train))  # type: ignore[arg-type]
    assert x.device.type == "cuda"
    assert y.device.type == "cuda"


def test_bf16_resume_is_exact(tmp_path: Path) -> None:
    args = [
        "trainer.precision=bf16",
        "trainer.checkpoint.every_n_epochs=1",
        "trainer.checkpoint.keep=4",
        "run.deterministic=true",
    ]
    _fit(tmp_path / "a", *args)
    fit(
        load_config(
            ROOT / "configs/digits.yaml",
            [
                f"run.dir={tmp_path / 'b'}",
                "trainer.progress=off",
                "run.device=cuda",
                "logging.tensorboard=false",
                "trainer.epochs=4",
                *args,
            ],
        ),
        resume=str(tmp_path / "a/checkpoints/epoch-2.pt"),
    )
    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
