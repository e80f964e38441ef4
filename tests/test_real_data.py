"""The example configs on the real local copies of MNIST and CIFAR-10 (../shared/data; skipped without it)."""

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_kiln

pytestmark = pytest.mark.slow  # the real datasets, `kiln train` subprocesses


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for this module's CIFAR-10 runs (decoding 60,000 JPEGs takes ~8 s; loading ~0.2 s)."""
    return tmp_path_factory.mktemp("cache")


def test_mnist_csv_one_epoch_reaches_097(mnist_dir: Path, tmp_path: Path) -> None:
    run_kiln(
        "train",
        "-c",
        str(ROOT / "configs/mnist_csv.yaml"),
        "trainer.epochs=1",
        f"data.root={mnist_dir}",
        f"run.dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test"]["num_samples"] == 10_000
    assert summary["test"]["accuracy"] >= 0.97


def test_cifar10_tutorial_config_on_local_folder(cifar10_dir: Path, tmp_path: Path, cache: Path) -> None:
    # The tutorial's own settings (batch 4, SGD 0.001); one epoch here to keep the suite short.
    run_kiln(
        "train",
        "-c",
        str(ROOT / "configs/cifar10_lenet.yaml"),
        "data.source=folder",
        f"data.root={cifar10_dir}",
        "trainer.epochs=1",
        f"run.dir={tmp_path}",
        f"data.cache_dir={cache}",
        timeout=600,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test"]["num_samples"] == 10_000
    assert summary["test"]["accuracy"] > 0.3
    assert (tmp_path / "checkpoints/last.pt").is_file()
    assert (tmp_path / "metrics.jsonl").read_text()


def test_cifar10_fast_beats_the_tutorials_two_epochs_in_one(
    cifar10_dir: Path, tmp_path: Path, cache: Path
) -> None:
    """configs/cifar10_fast.yaml: the same LeNet passes the tutorial's 54.7 % (2 epochs at batch 4) in one
    epoch. Its speed is measured by benchmarks/cpu_time_to_accuracy.py, not here."""
    run_kiln(
        "train",
        "-c",
        str(ROOT / "configs/cifar10_fast.yaml"),
        "data.source=folder",
        f"data.root={cifar10_dir}",
        f"run.dir={tmp_path}",
        f"data.cache_dir={cache}",
        timeout=600,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test"]["num_samples"] == 10_000
    assert summary["test"]["accuracy"] >= 0.547
    assert summary["epochs_run"] == 1
