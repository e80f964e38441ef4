"""Every path the photos template's comments promise, run as a new user runs them: a project made by
`kiln new --template photos` in a temporary folder outside the repo, on real photos (some of them
grayscale), each command run from the project folder with its output going to a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, STOP_SECONDS, photo_subset

pytestmark = pytest.mark.slow  # real photos, real weights, every command as a subprocess

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


class Project:
    def __init__(self, folder: Path, weights: Path) -> None:
        self.folder, self.weights = folder, weights

    def kiln(self, *args: str, ok: bool = True, timeout: int = 600) -> str:
        """Run `kiln ARGS` from the project folder, output to a file; returns that output."""
        log = self.folder / f"log-{args[0]}-{time.monotonic_ns()}.txt"
        with log.open("w") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "kiln", *args],
                cwd=self.folder,
                env=ENV,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        text = log.read_text()
        if ok:
            assert proc.returncode == 0, f"kiln {' '.join(args)} failed ({proc.returncode}):\n{text[-4000:]}"
        return text

    @property
    def offline(self) -> str:
        """The template's `pretrained: true`, offline, and a cache of the test's own (not ~/.cache/kiln)."""
        return f"model.pretrained={self.weights}"

    @property
    def cache(self) -> str:
        return f"data.cache_dir={self.folder.parent / 'cache'}"


def new_project(photos: Path, weights: Path) -> Project:
    """`kiln new proj --template photos --data PHOTOS`, run beside the photos."""
    subprocess.run(
        [sys.executable, "-m", "kiln", "new", "proj", "--template", "photos", "--data", str(photos)],
        cwd=photos.parent,
        env=ENV,
        check=True,
        capture_output=True,
    )
    return Project(photos.parent / "proj", weights)


@pytest.fixture(scope="module")
def project(
    hymenoptera_dir: Path, imagenet_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Project:
    base = tmp_path_factory.mktemp("user")
    # grayscale photos (as X-rays are) with RGB ImageNet weights
    photos = photo_subset(hymenoptera_dir, base / "photos", classes=2, per_class=40, gray=True)
    return new_project(photos, imagenet_weights)


def test_check_data(project: Project) -> None:
    out = project.kiln("check-data", "-c", "config.yaml", project.cache)
    assert "problems: 0" in out
    assert "class balance (train)" in out


def test_the_fixed_feature_extractor_trains_and_a_second_run_reuses_its_features(project: Project) -> None:
    args = (
        "train",
        "-c",
        "config.yaml",
        "model.freeze=backbone",
        project.offline,
        project.cache,
        "trainer.epochs=3",
    )
    first = project.kiln(*args)
    assert "backbone features of" in first
    assert "pretrained weights take 3 channels" in first  # the grayscale photos became RGB
    second = project.kiln(*args, "run.name=again")
    assert "read from the cache" in second
    assert "backbone features of" not in second
    summary = json.loads((project.folder / "runs/proj/summary.json").read_text())
    assert summary["best_metric"] > 0.7


def test_fine_tuning(project: Project) -> None:
    project.kiln(
        "train", "-c", "config.yaml", project.offline, project.cache, "trainer.epochs=1", "run.name=finetune"
    )
    assert (project.folder / "runs/finetune/checkpoints/best.pt").is_file()


def test_eval_predict_export(project: Project) -> None:
    project.kiln(
        "train",
        "-c",
        "config.yaml",
        "model.freeze=backbone",
        project.offline,
        project.cache,
        "trainer.epochs=2",
    )
    best = "runs/proj/checkpoints/best.pt"
    report = project.kiln("eval", "--checkpoint", best)
    assert "report:" in report
    assert (project.folder / "runs/proj/eval-val/report.html").is_file()
    photo = next((project.folder.parent / "photos/val").rglob("*.png"))

    predicted = json.loads(project.kiln("predict", "--model", best, str(photo), "--topk", "1"))
    assert predicted[0]["top"][0]["class"] in ("ants", "bees")
    exported = project.kiln("export", "--checkpoint", best, "--format", "onnx")
    assert "OK" in exported


def test_lr_find(project: Project) -> None:
    out = project.kiln(
        "lr-find",
        "-c",
        "config.yaml",
        "model.freeze=backbone",
        project.offline,
        project.cache,
        "--steps",
        "30",
    )
    assert "suggested: optimizer.lr=" in out


def test_tune_computes_the_features_once(project: Project) -> None:
    out = project.kiln(
        "tune",
        "-c",
        "config.yaml",
        "--space",
        "space.yaml",
        "--samples",
        "2",
        "model.freeze=backbone",
        project.offline,
        project.cache,
        "trainer.epochs=1",
        "--out",
        "runs/tune",
        "--cpus-per-trial",
        "1",
    )
    assert "best config:" in out
    trial_logs = list((project.folder / "runs/tune").rglob("train.log"))
    assert trial_logs
    computed = sum("backbone features of" in p.read_text() for p in trial_logs)
    assert computed == 0  # the earlier frozen runs of this project cached them: every trial read them


def test_ctrl_c_then_resume(project: Project) -> None:
    log = project.folder / "interrupted.txt"
    args = [
        "train",
        "-c",
        "config.yaml",
        project.offline,
        project.cache,
        "trainer.epochs=2",
        "run.name=stopped",
        "trainer.checkpoint.every_n_steps=1",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln", *args],
            cwd=project.folder,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    last = project.folder / "runs/stopped/checkpoints/last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130, log.read_text()
    assert time.monotonic() - t0 < STOP_SECONDS
    resumed = project.kiln(*args, "--resume", "auto")
    assert "resuming from" in resumed
    assert json.loads((project.folder / "runs/stopped/summary.json").read_text())["epochs_run"] == 2
