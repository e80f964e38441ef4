"""The fast tier's export round trips: a tiny model trained in about a second, written in the formats that
load back in this process (safetensors, torch.export, ONNX in onnxruntime), verified against the eager
model on real digits, and run by `kiln predict`'s loader. (Every format for bigger models, TorchScript in a
fresh process and Triton are in the slow tier: test_formats.py, test_torchscript.py, test_triton.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.engine.trainer import fit
from kiln.export import TOLERANCE
from kiln.export.run import export_checkpoint
from kiln.inference.loading import load_any
from kiln.inference.predict import predict
from tests.conftest import ROOT, one_thread


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    overrides = [
        f"run.dir={run}",
        "model.name=mlp",
        "model.args={hidden: [16]}",
        "trainer.epochs=1",
        "data.train_limit=64",
        "trainer.progress=off",
        "logging.tensorboard=false",
    ]
    with one_thread():
        fit(load_config(ROOT / "configs/digits.yaml", overrides))
    return run / "checkpoints/best.pt"


@pytest.mark.parametrize("fmt", ["safetensors", "export", "onnx"])
def test_written_loaded_back_and_equal_to_the_eager_model(checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    report = export_checkpoint(checkpoint, fmt, tmp_path / fmt)
    assert report["passed"], report
    assert report["max_abs_diff"] <= TOLERANCE


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_predict_runs_the_artifact_as_it_runs_the_checkpoint(
    checkpoint: Path, tmp_path: Path, fmt: str
) -> None:
    report = export_checkpoint(checkpoint, fmt, tmp_path / fmt)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    from sklearn.datasets import load_digits

    for i, pixels in enumerate(load_digits().images[:6]):
        Image.fromarray((pixels * (255 / 16)).astype("uint8")).save(images / f"{i}.png")
    exported = predict(load_any(report["artifact"]), [str(images)], topk=1)
    original = predict(load_any(checkpoint), [str(images)], topk=1)
    assert [r["top"][0]["class"] for r in exported] == [r["top"][0]["class"] for r in original]
