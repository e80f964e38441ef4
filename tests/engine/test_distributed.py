"""DDP on the CPU: two gloo processes under torchrun (--standalone, OMP_NUM_THREADS=1), short timeouts
so a bug fails fast instead of hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import kiln
from tests.conftest import ROOT, toy_photos, write_png_folder

pytestmark = pytest.mark.slow  # DDP: torchrun subprocesses

DIGITS = str(ROOT / "configs/digits.yaml")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "KILN_DDP_TIMEOUT_S": "60",
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
}


class SaveRankWeights(kiln.Callback):
    """Test helper: each rank writes its own final weights (kiln itself writes from rank 0 only)."""

    def on_fit_start(self, info: kiln.FitInfo) -> None:
        self.model, self.rank, self.dir = info.model, info.rank, info.run_dir

    def on_fit_end(self, summary: dict[str, Any]) -> None:
        torch.save(self.model.state_dict(), self.dir / f"rank{self.rank}.pt")


class FailOnce(kiln.Callback):
    """Test helper: rank 1 raises at the end of epoch 2, once (a marker file remembers)."""

    def on_fit_start(self, info: kiln.FitInfo) -> None:
        self.rank, self.marker = info.rank, info.run_dir / "failed-once"

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        if self.rank == 1 and epoch == 2 and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("simulated worker failure")
        return None


def _kiln(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_two_gloo_processes_train_alike_and_evaluate_exactly(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    _kiln(
        "train",
        "-c",
        DIGITS,
        "--nproc",
        "2",
        f"run.dir={run}",
        "trainer.epochs=2",
        "trainer.progress=off",
        "logging.tensorboard=false",
        "callbacks=[{name: 'tests.engine.test_distributed:SaveRankWeights'}]",
    )
    w0, w1 = torch.load(run / "rank0.pt", weights_only=True), torch.load(run / "rank1.pt", weights_only=True)
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["test"]["num_samples"] == 360  # each test image once
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    # single-process evaluation of the same checkpoint gives the same accuracy
    proc = _kiln("eval", "--checkpoint", str(run / "checkpoints/best.pt"), "--out", str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval/report.json").read_text())
    assert report["num_samples"] == 360
    assert "accuracy" in proc.stdout
    assert report["accuracy"] == summary["test"]["accuracy"]
    assert abs(report["loss"] - summary["test"]["loss"]) < 1e-5


def test_worker_failure_restarts_and_resumes_from_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "elastic"
    proc = _kiln(
        "train",
        "-c",
        DIGITS,
        "--nproc",
        "2",
        "--max-restarts",
        "1",
        f"run.dir={run}",
        "trainer.epochs=3",
        "trainer.progress=off",
        "logging.tensorboard=false",
        "callbacks=[{name: 'tests.engine.test_distributed:FailOnce'}]",
        timeout=400,
    )
    assert (run / "failed-once").exists()  # it did fail once ...
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 3  # ... and still finished every epoch
    epochs = [json.loads(s)["epoch"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3], proc.stdout[-2000:]  # resumed from last.pt of epoch 1 (epoch 2 redone)


def test_global_batch_must_split_evenly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln",
            "train",
            "-c",
            DIGITS,
            "--nproc",
            "2",
            "data.batch_size=33",
            f"run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stderr
    assert "does not split evenly over 2 processes" in proc.stderr


@pytest.fixture(scope="module")
def frozen_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_folder(
        tmp_path_factory.mktemp("ddp") / "imgs",
        ["a", "b", "c"],
        per_class=10,
        size=20,
        splits=("train", "val"),
    )


def _frozen(root: Path, run: Path, *extra: str) -> list[str]:
    """A frozen toy backbone on 30 photos: 2 views of a random crop, batches of 8 (4 per rank)."""
    return [
        "train",
        "-c",
        DIGITS,
        *toy_photos(root, run, run.parent / "cache"),
        "model.freeze=backbone",
        "trainer.epochs=3",
        "data.augment={random_resized_crop: {scale: [0.5, 1]}, hflip: true, views: 2}",
        "optimizer.name=sgd",
        "optimizer.lr=0.1",
        "callbacks=[{name: 'tests.engine.test_distributed:SaveRankWeights'}]",
        *extra,
    ]


def _weights(run: Path) -> list[dict[str, torch.Tensor]]:
    return [
        torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1) if (run / f"rank{r}.pt").exists()
    ]


@pytest.mark.parametrize("head", ["epochs", "solve"])
def test_two_ranks_train_the_frozen_head_as_one_process_does(
    frozen_photos: Path, tmp_path: Path, head: str
) -> None:
    _kiln(*_frozen(frozen_photos, tmp_path / "one", f"trainer.frozen_head={head}"))
    proc = _kiln(*_frozen(frozen_photos, tmp_path / "two", f"trainer.frozen_head={head}"), "--nproc", "2")
    (one,), (rank0, _) = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert torch.allclose(rank0["fc.weight"], one["fc.weight"], atol=1e-4), proc.stdout[-2000:]


def test_two_ranks_end_with_the_same_head(frozen_photos: Path, tmp_path: Path) -> None:
    _kiln(*_frozen(frozen_photos, tmp_path / "two", "trainer.frozen_head=epochs"), "--nproc", "2")
    rank0, rank1 = _weights(tmp_path / "two")
    assert torch.equal(rank0["fc.weight"], rank1["fc.weight"])


def test_two_ranks_compute_the_features_in_one_sharded_pass(frozen_photos: Path, tmp_path: Path) -> None:
    proc = _kiln(*_frozen(frozen_photos, tmp_path / "two", "trainer.frozen_head=epochs"), "--nproc", "2")
    assert proc.stdout.count("backbone features of 30 train images x 2 view(s): done, 30 in") == 1


def test_two_ranks_unfreeze_and_train_the_backbone_alike(frozen_photos: Path, tmp_path: Path) -> None:
    unfreeze = "trainer.unfreeze={at_epoch: 2, lr_mult: 1.0}"
    _kiln(*_frozen(frozen_photos, tmp_path / "two", unfreeze), "--nproc", "2")
    rank0, rank1 = _weights(tmp_path / "two")
    assert torch.equal(rank0["stem.0.weight"], rank1["stem.0.weight"])
