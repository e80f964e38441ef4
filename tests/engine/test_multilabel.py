"""Multi-label classification end to end on real photos: 2x2 mosaics of CIFAR-10 images labelled with the
classes they show. Training (BCE by default, mixup mixing label vectors), thresholds tuned on val and kept
in the checkpoint, and the evaluation's numbers equal to scikit-learn's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from kiln import checkpoint as ckpt
from kiln.cli import main
from kiln.config import load_config
from kiln.engine.trainer import fit
from kiln.errors import ConfigError
from kiln.evaluation.run import evaluate_checkpoint
from tests.conftest import ROOT, cifar_mosaics

pytestmark = pytest.mark.slow  # real photos, real training

CLASSES = ["airplane", "automobile", "bird", "cat"]


@pytest.fixture(scope="module")
def mosaics(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cifar_mosaics(
        cifar10_dir, tmp_path_factory.mktemp("mosaics"), {"train": 600, "val": 150, "test": 150}
    )


def _cfg(mosaics: Path, run: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        ROOT / "configs/digits.yaml",
        [
            "data.source=csv",
            f"data.root={mosaics}",
            "data.csv.val=val.csv",
            "data.csv.test=test.csv",
            "data.csv.label_column=labels",
            "data.csv.multi_label=true",
            f"run.dir={run}",
            f"data.cache_dir={run.parent / 'cache'}",
            "model.name=resnet_small",
            "model.args={widths: [16, 32]}",
            "trainer.epochs=4",
            "data.batch_size=32",
            "optimizer.lr=0.003",
            "trainer.checkpoint.monitor=val_map",
            "trainer.progress=off",
            "logging.tensorboard=false",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained(mosaics: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "r"
    fit(_cfg(mosaics, run))
    return run


def test_it_learns_the_labels(trained: Path) -> None:
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["classes"] == CLASSES
    assert (
        summary["test"]["map"] > 0.7
    )  # labels' base rates are ~0.6: a model that learned nothing scores that


def test_thresholds_are_tuned_and_kept_in_the_checkpoints(trained: Path) -> None:
    for name in ("best.pt", "last.pt"):
        thresholds = ckpt.load(trained / "checkpoints" / name)["recipe"]["thresholds"]
        assert len(thresholds) == len(CLASSES)
        assert all(0.0 < t < 1.0 for t in thresholds)


def test_the_report_equals_sklearn(trained: Path, tmp_path: Path) -> None:
    rep = evaluate_checkpoint(trained / "checkpoints/best.pt", out_dir=tmp_path / "eval")
    rows = [line.split(",") for line in (tmp_path / "eval/predictions.csv").read_text().splitlines()[1:]]
    scores = np.array([[float(v) for v in r[3:]] for r in rows])
    truth = np.array([[c in r[1].split(";") for c in CLASSES] for r in rows], dtype=int)
    thresholds = np.array([rep["thresholds"][c] for c in CLASSES])
    predicted = (scores >= thresholds).astype(int)
    assert rep["map_macro"] == pytest.approx(
        skm.average_precision_score(truth, scores, average="macro"), abs=1e-5
    )
    assert rep["map_micro"] == pytest.approx(
        skm.average_precision_score(truth, scores, average="micro"), abs=1e-5
    )
    assert rep["subset_accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted), abs=1e-6)
    assert rep["hamming_loss"] == pytest.approx(skm.hamming_loss(truth, predicted), abs=1e-6)
    p, r, f, s = skm.precision_recall_fscore_support(truth, predicted, zero_division=0)
    for i, c in enumerate(CLASSES):
        assert rep["per_class"][c]["f1"] == pytest.approx(f[i], abs=1e-6)
        assert rep["per_class"][c]["precision"] == pytest.approx(p[i], abs=1e-6)
        assert rep["per_class"][c]["recall"] == pytest.approx(r[i], abs=1e-6)


def test_kiln_eval_prints_the_map_line(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--checkpoint", str(trained / "checkpoints/best.pt"), "--out", str(tmp_path)]) == 0
    assert re.search(
        r"test: mAP 0\.\d{4}, macro F1 0\.\d{4} at the tuned thresholds", capsys.readouterr().out
    )


def test_the_tuned_thresholds_beat_one_half_on_f1(trained: Path, tmp_path: Path) -> None:
    rep = evaluate_checkpoint(trained / "checkpoints/best.pt", split="val", out_dir=tmp_path / "eval")
    assert rep["macro"]["f1"] >= rep["at_0.5"]["macro"]["f1"]  # tuned on this very split: never worse


def test_the_gallery_lists_the_images_with_the_most_wrong_labels(trained: Path, tmp_path: Path) -> None:
    evaluate_checkpoint(trained / "checkpoints/best.pt", out_dir=tmp_path / "eval")
    mistakes = (tmp_path / "eval/mistakes.csv").read_text().splitlines()
    wrong = [int(line.split(",")[4]) for line in mistakes[1:]]
    assert wrong == sorted(wrong, reverse=True)
    assert (tmp_path / "eval/confident_mistakes.png").is_file()


def test_mixup_mixes_label_vectors(mosaics: Path, tmp_path: Path) -> None:
    summary = fit(
        _cfg(mosaics, tmp_path / "r", "trainer.epochs=1", "data.augment.mixup=0.4", "data.augment.cutmix=1.0")
    )
    assert np.isfinite(summary["test"]["loss"])


def test_a_single_label_loss_on_multi_label_data_is_one_line(mosaics: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes one class per image, but the data is multi-label"):
        fit(_cfg(mosaics, tmp_path / "r", "trainer.loss=cross_entropy"))


def test_one_hot_columns_give_the_same_labels(mosaics: Path) -> None:
    from kiln.data import plan

    names = plan(_cfg(mosaics, Path("unused")).data)
    columns = plan(
        _cfg(mosaics, Path("unused"), f"data.csv.label_column={CLASSES}", "data.csv.multi_label=false").data
    )
    assert columns.classes == names.classes
    assert torch.equal(columns.splits.train.label_tensor(), names.splits.train.label_tensor())


def test_asymmetric_loss_and_class_weights_train(mosaics: Path, tmp_path: Path) -> None:
    summary = fit(
        _cfg(
            mosaics,
            tmp_path / "r",
            "trainer.epochs=1",
            "trainer.loss=asymmetric",
            "trainer.loss_args={reduction: mean}",
        )
    )
    assert np.isfinite(summary["test"]["loss"])
    weighted = fit(_cfg(mosaics, tmp_path / "w", "trainer.epochs=1", "trainer.class_weights=balanced"))
    assert np.isfinite(weighted["test"]["loss"])
