"""Imbalanced classes: the balanced sampler (exact and resumable like every epoch order), class weights and
the count-based losses built from the train counts, the deferred re-weighting schedule, and the metrics
that weigh every class alike (equal to scikit-learn's). The bit-identical resume trains two 3-epoch runs
and is marked slow by itself; the others train at most 3 epochs of 54 tiny images, under a second."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from sklearn.utils.class_weight import compute_class_weight

from kiln.config import load_config
from kiln.data import plan
from kiln.data.loaders import EpochOrder
from kiln.engine.criterion import build_criterion
from kiln.engine.trainer import fit
from kiln.metrics.builtin import balanced_accuracy, macro_f1, mean_average_precision
from tests.conftest import ROOT, write_png_folder

SKEWED = {"a": 40, "b": 10, "c": 4}


def _skewed(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for k, (name, n) in enumerate(SKEWED.items()):
        write_png_folder(root, [name], per_class=n, splits=("train",), seed=k)
    return root


def _cfg(root: Path, run: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        ROOT / "configs/digits.yaml",
        [
            "data.source=folder",
            f"data.root={root}",
            "data.val_split=0",
            "data.batch_size=6",
            f"run.dir={run}",
            f"data.cache_dir={run.parent / 'cache'}",
            "trainer.progress=off",
            "logging.tensorboard=false",
            "model.name=mlp",
            "model.args={hidden: [16]}",
            *extra,
        ],
    )


def test_a_balanced_epoch_draws_each_class_about_equally() -> None:
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    order = EpochOrder(len(labels), 100, True, seed=0, balanced=labels)
    shares = torch.bincount(labels[order.indices()], minlength=3) / len(labels)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.05)


def test_a_balanced_epoch_is_a_function_of_seed_and_epoch() -> None:
    labels = torch.tensor([0] * 50 + [1] * 5)
    first, again = EpochOrder(55, 8, True, 1, balanced=labels), EpochOrder(55, 8, True, 1, balanced=labels)
    assert torch.equal(first.indices(), again.indices())
    again.set_epoch(1)
    assert not torch.equal(first.indices(), again.indices())


def test_balanced_weights_are_sklearns(tmp_path: Path) -> None:
    cfg = _cfg(_skewed(tmp_path), tmp_path / "r", "trainer.class_weights=balanced")
    loss = build_criterion(cfg, plan(cfg.data))
    counts = np.repeat(np.arange(3), list(SKEWED.values()))
    expected = compute_class_weight("balanced", classes=np.arange(3), y=counts)
    weights = loss.weights.double()  # type: ignore[attr-defined]
    assert torch.allclose(weights, torch.tensor(expected), atol=1e-9)


def test_a_count_based_loss_gets_the_train_counts(tmp_path: Path) -> None:
    cfg = _cfg(_skewed(tmp_path), tmp_path / "r", "trainer.loss=logit_adjusted")
    loss = build_criterion(cfg, plan(cfg.data))
    logits, y = torch.zeros(2, 3), torch.tensor([0, 2])
    prior = torch.tensor(list(SKEWED.values()), dtype=torch.float64)
    expected = torch.nn.functional.cross_entropy((prior / prior.sum()).log().float().expand(2, 3), y)
    assert loss(logits, y).item() == pytest.approx(expected.item(), abs=1e-6)


def test_deferred_reweighting_switches_at_its_epoch(tmp_path: Path) -> None:
    root = _skewed(tmp_path)
    cfg = _cfg(
        root,
        tmp_path / "r",
        "trainer.loss=ldam",
        "trainer.loss_args={scale: 1, drw_epoch: 2}",
        "trainer.epochs=3",
    )
    fit(cfg)
    lines = [json.loads(s) for s in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    loss = build_criterion(cfg, plan(cfg.data))
    loss.set_epoch(1)  # type: ignore[attr-defined]
    assert loss.weights is None  # type: ignore[attr-defined]
    loss.set_epoch(2)  # type: ignore[attr-defined]
    assert loss.weights is not None  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_balanced_sampler_run_resumes_bit_identically(tmp_path: Path) -> None:
    root = _skewed(tmp_path)
    common = [
        "data.sampler=balanced",
        "trainer.epochs=3",
        "trainer.checkpoint.every_n_epochs=1",
        "trainer.checkpoint.keep=3",
        "trainer.checkpoint.monitor=val_balanced_accuracy",
        "data.val_split=0.2",
    ]
    fit(_cfg(root, tmp_path / "straight", *common))
    fit(_cfg(root, tmp_path / "resumed", *common), resume=str(tmp_path / "straight/checkpoints/epoch-1.pt"))
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _predictions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat(
        [torch.zeros(80, dtype=torch.long), torch.ones(15, dtype=torch.long), torch.full((5,), 2)]
    )
    logits = torch.randn(100, 3, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 3)
    return logits, labels


def test_balanced_accuracy_is_sklearns() -> None:
    logits, labels = _predictions()
    expected = skm.balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert balanced_accuracy(logits, labels) == pytest.approx(expected, abs=1e-9)


def test_macro_f1_is_sklearns() -> None:
    logits, labels = _predictions(1)
    expected = skm.f1_score(labels.numpy(), logits.argmax(1).numpy(), average="macro")
    assert macro_f1(logits, labels) == pytest.approx(expected, abs=1e-9)


def test_map_is_sklearns_mean_of_one_vs_rest_average_precision() -> None:
    logits, labels = _predictions(2)
    probs = logits.softmax(1).numpy()
    expected = np.mean([skm.average_precision_score(labels.numpy() == k, probs[:, k]) for k in range(3)])
    assert mean_average_precision(logits, labels) == pytest.approx(expected, abs=1e-5)


def test_check_data_names_the_skew_and_what_training_does_about_it(tmp_path: Path) -> None:
    from kiln.data.check import check

    report = check(_cfg(_skewed(tmp_path), tmp_path / "r"))
    assert "ratio 10.0:1" in report.text
    assert "trainer.imbalance=auto" in report.warnings[0]
