"""`kiln eval` on a real (small) trained model: every number checked against scikit-learn."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from kiln.config import load_config
from kiln.engine.trainer import fit
from kiln.evaluation.run import evaluate_checkpoint
from kiln.metrics import Outputs, compute, pr_curves
from tests.conftest import ROOT, run_kiln

pytestmark = pytest.mark.slow  # a 2-epoch run for the module, `kiln eval` subprocesses, a headless browser


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    # 2 epochs: a model that is good but still makes mistakes, so every metric is non-trivial
    fit(
        load_config(
            ROOT / "configs/digits.yaml", [f"run.dir={run}", "trainer.epochs=2", "trainer.progress=off"]
        )
    )
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def evaluated(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    evaluate_checkpoint(trained, out_dir=out)
    return out


def _predictions(out: Path) -> tuple[list[str], list[str], np.ndarray]:
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    return (
        [r["true"] for r in rows],
        [r["predicted"] for r in rows],
        np.array([float(r["confidence"]) for r in rows]),
    )


def test_report_matches_sklearn_recomputed_from_predictions(evaluated: Path) -> None:
    rep = json.loads((evaluated / "report.json").read_text())
    y_true, y_pred, _ = _predictions(evaluated)
    classes = rep["classes"]
    assert rep["num_samples"] == len(y_true)  # every test image has a row in predictions.csv ...
    assert len(y_true) == 360  # ... and every test image was evaluated
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    for i, c in enumerate(classes):
        pc = rep["per_class"][c]
        assert pc["precision"] == pytest.approx(p[i], abs=1e-6), c
        assert pc["recall"] == pytest.approx(r[i], abs=1e-6), c
        assert pc["f1"] == pytest.approx(f[i], abs=1e-6), c
        assert pc["support"] == s[i], c
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=classes, average=avg, zero_division=0
        )
        assert rep[avg]["precision"] == pytest.approx(p, abs=1e-6), avg
        assert rep[avg]["recall"] == pytest.approx(r, abs=1e-6), avg
        assert rep[avg]["f1"] == pytest.approx(f, abs=1e-6), avg
    assert rep["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=classes).tolist()
    assert rep["accuracy"] < 1.0  # the checks above are only meaningful with mistakes in them


def test_topk_loss_ece_and_ap_match_sklearn(trained: Path) -> None:
    from kiln.data import build
    from kiln.data.augment import BatchTransform
    from kiln.engine.evaluate import infer
    from kiln.models.restore import restore

    r = restore(trained)
    bundle = build(r.config.data, 0, torch.device("cpu"))
    t = BatchTransform(list(r.preprocess.mean), list(r.preprocess.std), r.config.data.augment, 0)
    logits, labels, idx = infer(r.model, bundle.test, t)
    rep = compute(Outputs(logits, labels, idx, r.classes))
    probs, y = logits.softmax(1).double().numpy(), labels.numpy()
    assert rep["top5_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y, probs, k=5, labels=range(10)), abs=1e-6
    )
    assert rep["loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(10)), abs=1e-4)
    for i, c in enumerate(r.classes):
        assert rep["average_precision"][c] == pytest.approx(
            skm.average_precision_score(y == i, probs[:, i]), abs=1e-5
        )
    # ECE, 15 equal-width bins over the top-1 confidence (Guo et al. 2017)
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(
        abs((pred[bins == b] == y[bins == b]).mean() - conf[bins == b].mean()) * (bins == b).mean()
        for b in range(15)
        if (bins == b).any()
    )
    assert rep["ece"] == pytest.approx(ece, abs=1e-5)
    # PR curves come from scores (many points), not from argmax predictions (a single point)
    (precision, recall), *_ = pr_curves(Outputs(logits, labels, idx, r.classes))
    sk_p, sk_r, _ = skm.precision_recall_curve(y == 0, probs[:, 0])
    assert len(precision) > 10
    assert np.interp(0.5, recall.numpy()[::-1], precision.numpy()[::-1]) == pytest.approx(
        np.interp(0.5, sk_r[::-1], sk_p[::-1]), abs=1e-3
    )


def test_outputs_written(evaluated: Path) -> None:
    for name in (
        "report.json",
        "predictions.csv",
        "report.html",
        "confusion_matrix.png",
        "per_class.png",
        "pr_curves.png",
        "reliability.png",
        "confident_mistakes.png",
    ):
        assert (evaluated / name).stat().st_size > 0, name
    with (evaluated / "predictions.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:4] == ["id", "true", "predicted", "confidence"]
    assert "top5" in header


def test_cli_eval_default_dir_and_overrides(trained: Path) -> None:
    proc = run_kiln("eval", "--checkpoint", str(trained), "--split", "val", "data.eval_batch_size=7")
    assert "val: accuracy" in proc.stdout
    assert (trained.parent.parent / "eval-val" / "report.json").is_file()
    bad = run_kiln("eval", "--checkpoint", str(trained), "model.name=mlp", check=False)
    assert bad.returncode == 2, bad.stderr
    assert "weights do not fit" in bad.stderr
    assert "Traceback" not in bad.stderr


def _chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium not installed")
    return browser, driver


def test_html_renders_offline_in_headless_chromium(evaluated: Path, tmp_path: Path) -> None:
    browser, driver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--proxy-server=127.0.0.1:9",  # no network
        "--window-size=1200,900",
    ):
        opts.add_argument(flag)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        d.get((evaluated / "report.html").as_uri())
        images = d.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        )
        assert len(images) == 5, images
        assert all(ok for _, ok in images), images
        assert "accuracy" in d.find_element("tag name", "body").text
        d.save_screenshot(str(tmp_path / "report.png"))
    finally:
        d.quit()
    assert (tmp_path / "report.png").stat().st_size > 10_000
