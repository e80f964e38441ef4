"""A multi-label model (2x2 mosaics of real CIFAR-10 photos) through predict and export: its labels are the
classes whose sigmoid score reaches the threshold tuned on val, exactly as training's evaluation computes
them; every export carries the thresholds and display names; the ONNX export gives predict's labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kiln.evaluation.run import split_logits
from kiln.inference.explain import Explainer
from kiln.inference.predict import format_results, load_any, predict
from kiln.inference.runtime import Classifier
from kiln.models.restore import restore
from tests.export import MULTI_LABEL_CLASSES, MULTI_LABEL_NAMES, exported, trained_multilabel

pytestmark = pytest.mark.slow  # real photos, real training, exports


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-runs"


@pytest.fixture(scope="module")
def checkpoint(cifar10_dir: Path, base: Path) -> Path:
    return trained_multilabel(cifar10_dir, base)


@pytest.fixture(scope="module")
def test_images(checkpoint: Path, base: Path) -> list[str]:
    """The test split's mosaics in the order of test.csv (rows test/0.png, test/1.png, ...)."""
    return [str(base / "mosaics" / "test" / f"{i}.png") for i in range(40)]


@pytest.fixture(scope="module")
def predicted(checkpoint: Path, test_images: list[str]) -> list[dict[str, Any]]:
    return predict(load_any(checkpoint), test_images, topk=4)


NAMES = [MULTI_LABEL_NAMES.get(c, c) for c in MULTI_LABEL_CLASSES]


def _label_names(results: list[dict[str, Any]]) -> list[list[str]]:
    return [[label["class"] for label in r["labels"]] for r in results]


def test_labels_are_the_eager_sigmoid_at_the_tuned_thresholds(
    checkpoint: Path, predicted: list[dict[str, Any]]
) -> None:
    restored = restore(checkpoint)
    logits, _, indices, _ = split_logits(restored, "test", torch.device("cpu"))  # training's evaluation
    scores = logits.sigmoid()[indices.argsort()]
    thresholds = torch.tensor(restored.recipe.classes.thresholds, dtype=scores.dtype)
    expected = [
        sorted(np.flatnonzero((row >= thresholds).numpy()).tolist(), key=lambda j: -float(row[j]))
        for row in scores
    ]
    assert _label_names(predicted) == [[NAMES[j] for j in row] for row in expected]
    assert sum(map(len, expected)) > 0  # the model predicts labels at all
    got = [label["score"] for r in predicted for label in r["labels"]]
    want = [float(row[j]) for row, chosen in zip(scores, expected, strict=True) for j in chosen]
    assert np.allclose(got, want, atol=1e-6)


def test_top_k_is_by_sigmoid_score(checkpoint: Path, predicted: list[dict[str, Any]]) -> None:
    for r in predicted:
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) != pytest.approx(1.0, abs=1e-3)  # sigmoid scores, not a softmax


def test_display_names_show_with_their_ids(predicted: list[dict[str, Any]]) -> None:
    shown = {(t["class"], t.get("id")) for r in predicted for t in r["top"]}
    assert shown == {("plane", "airplane"), ("car", "automobile"), ("bird", None), ("cat", None)}


def test_the_onnx_export_gives_predicts_labels(
    checkpoint: Path, base: Path, predicted: list[dict[str, Any]], test_images: list[str]
) -> None:
    _, out = exported("multilabel", "onnx", base)
    from_onnx = predict(load_any(out / "model.onnx"), test_images, topk=4)
    assert _label_names(from_onnx) == _label_names(predicted)
    scores = [label["score"] for r in from_onnx for label in r["labels"]]
    assert np.allclose(scores, [label["score"] for r in predicted for label in r["labels"]], atol=1e-5)


def test_every_record_carries_the_thresholds_and_names(checkpoint: Path, base: Path) -> None:
    thresholds = list(restore(checkpoint).recipe.classes.thresholds)
    _, onnx_dir = exported("multilabel", "onnx", base)
    _, safetensors_dir = exported("multilabel", "safetensors", base)
    for record_file in (onnx_dir / "preprocess.json", safetensors_dir / "model.json"):
        record = json.loads(record_file.read_text())
        assert record["multi_label"] is True, record_file
        assert record["thresholds"] == thresholds, record_file
        assert record["class_names"] == NAMES, record_file
    preprocess = json.loads((onnx_dir / "preprocess.json").read_text())
    assert "sigmoid" in preprocess["output"]["meaning"]


def test_a_triton_repository_holds_the_thresholds_for_the_client(checkpoint: Path, base: Path) -> None:
    _, repo = exported("multilabel", "triton", base, name="tags", backend="onnx")
    model_dir = repo / "tags"
    thresholds = list(restore(checkpoint).recipe.classes.thresholds)
    assert [float(t) for t in (model_dir / "thresholds.txt").read_text().split()] == thresholds
    assert (model_dir / "labels.txt").read_text().splitlines() == NAMES
    assert json.loads((model_dir / "preprocess.json").read_text())["thresholds"] == thresholds


def test_csv_has_a_labels_column(predicted: list[dict[str, Any]]) -> None:
    lines = format_results(predicted, "csv", 4).splitlines()
    header = lines[0].split(",")
    assert header[-2:] == ["labels", "error"]
    assert "top1_id" in header
    first_labels = ";".join(f"{label['class']}:{label['score']:.6f}" for label in predicted[0]["labels"])
    assert lines[1].split(",")[-2] == first_labels


def test_each_label_gets_its_own_overlay(checkpoint: Path, test_images: list[str], tmp_path: Path) -> None:
    classifier = Classifier(load_any(checkpoint))
    results = predict(classifier, test_images[:8], topk=4, explainer=Explainer(classifier, tmp_path))
    for r in results:
        explained = [Path(p).stem.split("-", 1)[1] for p in r["overlays"]]  # "<stem>-<class>.png"
        assert explained == ([label["class"] for label in r["labels"]] or [r["top"][0]["class"]])
