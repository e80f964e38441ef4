"""`kiln predict --explain OUT_DIR`: a Grad-CAM overlay per image on the model's view of it, named so that no
two images share a file, the same computed in batches as one by one, from a checkpoint or a safetensors
export; the formats without a torch module, a model without a feature map and a folder of someone else's
files are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kiln.cli import main
from kiln.errors import KilnError
from kiln.inference.explain import Explainer
from kiln.inference.predict import load_any, predict
from kiln.inference.runtime import Classifier
from tests.export import exported, trained

pytestmark = pytest.mark.slow  # trains models, exports one


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-runs"


@pytest.fixture(scope="module")
def checkpoint(base: Path) -> Path:
    return trained("resnet_small", base)  # a CNN on 32x32 RGB PNGs of three classes


@pytest.fixture(scope="module")
def photos(checkpoint: Path, base: Path) -> list[Path]:
    """Images of every class; the same stems (0.png, 1.png, ...) recur in each class folder."""
    return sorted((base / "rgb" / "test").rglob("*.png"))[::2]


def _pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _explained(checkpoint: Path, photos: list[Path], out: Path, batch_size: int) -> list[dict]:
    classifier = Classifier(load_any(checkpoint))
    out.mkdir()
    return predict(classifier, [str(p) for p in photos], 1, batch_size, explainer=Explainer(classifier, out))


def test_an_overlay_per_image_that_differs_from_the_image(
    checkpoint: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cams"
    assert main(["predict", "--model", str(checkpoint), *map(str, photos), "--explain", str(out)]) == 0
    results = json.loads(capsys.readouterr().out)
    written = [Path(p) for r in results for p in r["overlays"]]
    assert [len(r["overlays"]) for r in results] == [1] * len(photos)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in written)  # no name twice
    for r, photo, overlay in zip(results, photos, written, strict=True):
        assert overlay.name.startswith(f"{photo.stem}-")
        assert overlay.name.endswith(f"-{r['top'][0]['class']}.png")  # the predicted class
        assert _pixels(overlay).shape == _pixels(photo).shape  # the model's view: 32x32, as trained
        assert np.abs(_pixels(overlay) - _pixels(photo)).mean() > 5  # a heatmap is blended in


def test_batched_overlays_equal_one_by_one(checkpoint: Path, photos: list[Path], tmp_path: Path) -> None:
    batched = _explained(checkpoint, photos, tmp_path / "batched", batch_size=len(photos))
    alone = _explained(checkpoint, photos, tmp_path / "alone", batch_size=1)
    for one, other in zip(batched, alone, strict=True):
        assert Path(one["overlays"][0]).name == Path(other["overlays"][0]).name
        # equal here (CPU); batch-size-dependent conv kernels elsewhere may move a pixel by one grey level
        assert np.abs(_pixels(one["overlays"][0]) - _pixels(other["overlays"][0])).max() <= 1


def test_a_safetensors_export_explains_as_its_checkpoint(
    checkpoint: Path, photos: list[Path], base: Path, tmp_path: Path
) -> None:
    _, folder = exported("resnet_small", "safetensors", base, method="trace")
    from_checkpoint = _explained(checkpoint, photos[:3], tmp_path / "checkpoint", batch_size=3)
    from_export = _explained(folder, photos[:3], tmp_path / "export", batch_size=3)
    for one, other in zip(from_checkpoint, from_export, strict=True):
        assert np.array_equal(_pixels(one["overlays"][0]), _pixels(other["overlays"][0]))


def test_formats_without_a_torch_module_are_refused_in_one_line(
    base: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder = exported("resnet_small", "onnx", base, method="trace")
    command = [
        "predict",
        "--model",
        str(folder / "model.onnx"),
        str(photos[0]),
        "--explain",
        str(tmp_path / "x"),
    ]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: --explain needs the model as a torch module: a kiln checkpoint or a ")
    assert f"{folder / 'model.onnx'} is a onnx artifact" in err
    assert err.count("\n") == 1


def test_a_model_without_a_feature_map_is_refused(base: Path, photos: list[Path], tmp_path: Path) -> None:
    classifier = Classifier(load_any(trained("mlp", base)))
    with pytest.raises(KilnError, match="produces no 4-D feature map"):
        Explainer(classifier, tmp_path)


def test_a_folder_of_someone_elses_files_is_refused_before_the_model_is_read(
    photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    command = [
        "predict",
        "--model",
        str(tmp_path / "none.pt"),
        str(photos[0]),
        "--explain",
        str(tmp_path / "mine"),
    ]
    assert main(command) == 2
    assert capsys.readouterr().err.startswith(f"kiln: error: --explain: {tmp_path / 'mine'} is not empty")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
