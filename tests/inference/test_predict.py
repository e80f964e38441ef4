"""`kiln predict` on PNG and JPEG files (one corrupt) with a checkpoint and with every export format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from kiln.cli import main
from kiln.export import ArtifactError
from kiln.inference.predict import load_any, predict
from tests.conftest import run_kiln
from tests.export import DIGIT_WORDS, exported, trained, write_predict_images

pytestmark = pytest.mark.slow  # trains a model, exports it, runs kiln in a subprocess


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-runs"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_predict_images(tmp_path_factory.mktemp("predict-images"))


@pytest.fixture(scope="module")
def artifacts(base: Path) -> dict[str, Path]:
    """Every kind of PATH predict accepts, for the same trained lenet."""
    ts = exported("lenet", "torchscript", base, method="trace")[1]
    triton = exported("lenet", "triton", base, name="m", backend="onnx", method="trace")[1]
    st = exported("lenet", "safetensors", base, method="trace")[1]
    return {
        "checkpoint": trained("lenet", base),
        "torchscript": ts / "model.pt",
        "torchscript folder": ts,
        "pt2": exported("lenet", "export", base, method="trace")[1] / "model.pt2",
        "onnx": exported("lenet", "onnx", base, method="trace")[1] / "model.onnx",
        "triton model": triton / "m",
        "triton repository": triton,
        "safetensors folder": st,
        "safetensors file": st / "model.safetensors",
    }


def test_every_artifact_gives_the_checkpoints_predictions(artifacts: dict[str, Path], images: Path) -> None:
    warnings: list[str] = []
    expected = predict(load_any(artifacts["checkpoint"]), [str(images)], topk=3, warn=warnings.append)
    # the folder walk: a.png, broken.png, sub/b.jpg (notes.txt is not an image extension, so skipped)
    assert [Path(r["path"]).name for r in expected] == ["a.png", "broken.png", "b.jpg"]
    assert "cannot read image" in expected[1]["error"]
    assert "broken.png" in expected[1]["error"]
    assert len(warnings) == 1
    assert "broken.png" in warnings[0]
    for r in (expected[0], expected[2]):
        assert len(r["top"]) == 3
        assert r["top"][0]["prob"] >= r["top"][1]["prob"] >= r["top"][2]["prob"]
    for kind, path in artifacts.items():
        got = predict(load_any(path, trust=True), [str(images)], topk=3, warn=lambda _: None)
        for g, e in zip(got, expected, strict=True):
            assert g.get("error") == e.get("error"), kind
            if "top" in e:
                assert [t["class"] for t in g["top"]] == [t["class"] for t in e["top"]], kind
                assert (
                    max(abs(a["prob"] - b["prob"]) for a, b in zip(g["top"], e["top"], strict=True)) < 1e-5
                ), kind


def test_pt2_needs_trust(artifacts: dict[str, Path]) -> None:
    with pytest.raises(ArtifactError, match="pass --trust"):
        load_any(artifacts["pt2"])


def test_cli_csv_and_json(
    artifacts: dict[str, Path], images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["predict", "--model", str(artifacts["onnx"]), str(images), "--topk", "2", "--format", "csv"])
        == 0
    )
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0] == "path,top1,top1_prob,top2,top2_prob,error"
    assert len(lines) == 4
    assert lines[2].startswith(f"{images / 'broken.png'},,,,,")
    assert "cannot read image" in lines[2]
    assert err.count("kiln: warning:") == 1
    assert "broken.png" in err

    jpeg = images / "sub" / "b.jpg"
    assert main(["predict", "--model", str(artifacts["triton model"]), str(jpeg), "--topk", "1"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["path"] == str(jpeg)
    assert len(result["top"]) == 1
    assert 0 < result["top"][0]["prob"] <= 1


def test_cli_fails_only_when_no_image_is_readable(artifacts: dict[str, Path], images: Path) -> None:
    # a real subprocess: the exit status and stderr as a user sees them
    proc = run_kiln(
        "predict",
        "--model",
        str(artifacts["torchscript"]),
        str(images / "broken.png"),
        str(images / "notes.txt"),
        str(images / "missing.png"),
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "kiln: error: no image could be read (3 input(s) failed" in proc.stderr
    assert [r["error"] != "" for r in json.loads(proc.stdout)] == [True, True, True]
    assert "missing.png: no such file" in proc.stderr
    assert "notes.txt: cannot read image" in proc.stderr


def test_cli_refuses_a_broken_triton_config(
    artifacts: dict[str, Path], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = shutil.copytree(artifacts["triton model"], tmp_path / "m")
    cfg = model_dir / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 1, 8, 8 ]", "dims: [ 3, 8, 8 ]"))
    assert main(["predict", "--model", str(model_dir), str(images)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kiln: error: {cfg}: input dims [3, 8, 8] differ")
    assert "\n" not in err


def test_unknown_model_path(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--model", str(tmp_path), str(images)]) == 2
    assert "holds no model kiln knows" in capsys.readouterr().err


def _inputs_that_give_no_image(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input, what the error says about it)"""
    (root / "empty").mkdir()
    (root / "texts" / "deeper").mkdir(parents=True)
    (root / "texts" / "a.txt").write_text("not an image")
    (root / "texts" / "deeper" / "b.TXT").write_text("nor this")
    (root / "hidden" / ".thumbs").mkdir(parents=True)  # hidden names are skipped, images in them too
    Image.new("RGB", (8, 8)).save(root / "hidden" / ".thumbs" / "c.png")
    (root / "zero.png").write_bytes(b"")
    looked = "(looked for .bmp, .gif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)"
    return {
        "empty folder": (root / "empty", f"no image files in it or below {looked}; it is empty"),
        "only text files": (
            root / "texts",
            f"no image files in it or below {looked}; it holds 2 other file(s): .txt",
        ),
        "only hidden images": (root / "hidden", f"no image files in it or below {looked}; it is empty"),
        "missing file": (root / "missing.jpg", "no such file"),
        "empty file": (root / "zero.png", "empty file (0 bytes)"),
    }


@pytest.mark.parametrize(
    "case", ["empty folder", "only text files", "only hidden images", "missing file", "empty file"]
)
def test_an_input_that_gives_no_image_is_named_with_the_reason(
    base: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, why = _inputs_that_give_no_image(tmp_path)[case]
    assert main(["predict", "--model", str(trained("lenet", base)), str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == f"kiln: error: no image could be read (1 input(s) failed: {path}: {why})"
    assert json.loads(out) == [{"path": str(path), "error": f"{path}: {why}"}]


def test_a_folder_without_images_beside_good_images_is_reported_and_the_rest_run(
    base: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained("lenet", base)),
                str(tmp_path / "empty"),
                str(images / "a.png"),
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [("top" in r, "error" in r) for r in results] == [(False, True), (True, False)]


def _top_classes(results: list[dict]) -> list[list[str]]:
    return [[t["class"] for t in r.get("top", [])] for r in results]


def test_display_names_are_shown_with_their_ids(
    base: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = trained("named", base)  # data.class_names: "0" is "zero", ...
    capsys.readouterr()  # the training's log lines, if this test trained it
    assert main(["predict", "--model", str(checkpoint), str(images / "a.png"), "--topk", "10"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    named = sorted((word, str(digit)) for digit, word in enumerate(DIGIT_WORDS))
    assert sorted((t["class"], t["id"]) for t in result["top"]) == named


def test_every_export_carries_the_display_names(base: Path, images: Path) -> None:
    expected = predict(load_any(trained("named", base)), [str(images)], topk=3)
    _, repo = exported("named", "triton", base, name="digits", backend="onnx")
    assert (
        repo / "digits" / "labels.txt"
    ).read_text().splitlines() == DIGIT_WORDS  # Triton answers with them
    record = json.loads((repo / "digits" / "preprocess.json").read_text())
    assert record["classes"] == [str(d) for d in range(10)]
    assert record["class_names"] == DIGIT_WORDS
    _, folder = exported("named", "safetensors", base)
    assert json.loads((folder / "model.json").read_text())["class_names"] == DIGIT_WORDS
    for artifact in (repo / "digits", folder):
        assert _top_classes(predict(load_any(artifact), [str(images)], topk=3)) == _top_classes(expected)
