"""Ctrl-C, SIGTERM and SIGUSR1 against a real `kiln train` with output going to a file, as a job runs it:
every phase stops within seconds, ends in a checkpoint or a clean exit, and loses no finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import kiln
from tests.conftest import ROOT, STOP_SECONDS, photo_subset

pytestmark = pytest.mark.slow  # real subprocesses, real photos

DIGITS = str(ROOT / "configs/digits.yaml")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _start(log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "kiln", *args], env=env or ENV, stdout=out, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{text!r} never appeared:\n{log.read_text()}"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, sig: int) -> float:
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return time.monotonic() - t0


@pytest.fixture
def photos(imagenette_dir: Path, tmp_path: Path) -> Path:
    return photo_subset(imagenette_dir, tmp_path / "photos", classes=4, per_class=150)


def _frozen(photos: Path, run: Path, cache: Path, weights: Path) -> list[str]:
    return [
        "train",
        "-c",
        str(ROOT / "configs/photos_fixed.yaml"),
        f"data.root={photos}",
        f"run.dir={run}",
        f"data.cache_dir={cache}",
        f"model.pretrained={weights}",
        "data.augment={random_resized_crop: {scale: [0.25, 1]}, hflip: true}",
        "trainer.epochs=4",
    ]


def test_sigterm_during_the_feature_pass_exits_within_2_s(
    photos: Path, tmp_path: Path, imagenet_weights: Path
) -> None:
    log = tmp_path / "log"
    proc = _start(log, *_frozen(photos, tmp_path / "run", tmp_path / "cache", imagenet_weights))
    _wait_for_text(log, "backbone features of", proc)
    time.sleep(1.0)
    seconds = _stop(proc, signal.SIGTERM)
    text = log.read_text()
    assert proc.returncode == 143, text
    assert seconds < STOP_SECONDS, text
    assert "Traceback" not in text
    assert "interrupted" in text


def test_sigterm_during_the_audits_feature_pass_stops_it(
    photos: Path, tmp_path: Path, imagenet_weights: Path
) -> None:
    log = tmp_path / "log"
    args = _frozen(photos, tmp_path / "run", tmp_path / "cache", imagenet_weights)
    proc = _start(log, "audit", *args[1:7], "--out", str(tmp_path / "audit"))
    _wait_for_text(log, "backbone features of", proc)
    seconds = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, log.read_text()
    assert seconds < STOP_SECONDS, log.read_text()


def test_the_features_of_a_finished_run_are_reused_by_the_next(
    imagenette_dir: Path, tmp_path: Path, imagenet_weights: Path
) -> None:
    # fewer photos than the signal tests need (they need a feature pass long enough to interrupt)
    photos = photo_subset(imagenette_dir, tmp_path / "photos", classes=4, per_class=40)
    args = _frozen(photos, tmp_path / "a", tmp_path / "cache", imagenet_weights)
    first = subprocess.run(
        [sys.executable, "-m", "kiln", *args], env=ENV, capture_output=True, text=True, timeout=900
    )
    assert first.returncode == 0, first.stderr
    assert "backbone features of 160 train images x 4 view(s)" in first.stdout
    again = [a if not a.startswith("run.dir=") else f"run.dir={tmp_path / 'b'}" for a in args]
    second = subprocess.run(
        [sys.executable, "-m", "kiln", *again], env=ENV, capture_output=True, text=True, timeout=900
    )
    assert "train features: read from the cache (4 view(s); no backbone pass)" in second.stdout
    assert "backbone features of" not in second.stdout
    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    assert torch.equal(a["classifier.weight"], b["classifier.weight"])  # the same run, only faster


def test_sigusr1_checkpoints_and_exits_138_and_the_run_resumes_exactly(tmp_path: Path) -> None:
    """SLURM's warning before it ends a job (--signal=USR1@120): treated as SIGTERM, exit 138."""
    common = [
        "-c",
        DIGITS,
        "data.batch_size=4",
        "trainer.progress=off",
        "logging.tensorboard=false",
        "trainer.epochs=2",
        "trainer.log_every_n_steps=10",
    ]
    subprocess.run(
        [sys.executable, "-m", "kiln", "train", *common, f"run.dir={tmp_path / 'straight'}"],
        env=ENV,
        check=True,
        capture_output=True,
        timeout=300,
    )
    log = tmp_path / "log"
    proc = _start(log, "train", *common, f"run.dir={tmp_path / 'run'}")
    _wait_for_text(log, "epoch   1/2", proc)
    assert _stop(proc, signal.SIGUSR1) < 5
    assert proc.returncode == 138, log.read_text()
    assert "SIGUSR1 received" in log.read_text()
    resumed = subprocess.run(
        [sys.executable, "-m", "kiln", "train", *common, f"run.dir={tmp_path / 'run'}", "--resume", "auto"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "resuming from" in resumed.stdout, resumed.stderr
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


SLOW_EVAL_MODEL = """
import time
from pathlib import Path
import torch
from torch import nn

class SlowEval(nn.Module):
    '''An MLP whose evaluation forward takes 50 ms a batch: a validation long enough to interrupt.'''

    def __init__(self, num_classes, in_channels, image_size, marker):
        super().__init__()
        pixels = in_channels * image_size[0] * image_size[1]
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, num_classes))

        self.marker = Path(marker)

    def forward(self, x):
        if not self.training:
            self.marker.touch()
            time.sleep(0.05)
        return self.net(x)

def slow_eval(num_classes, in_channels, image_size, marker):
    return SlowEval(num_classes, in_channels, image_size, marker)
"""


def test_ctrl_c_during_validation_keeps_the_epoch_and_resume_validates_it(tmp_path: Path) -> None:
    (tmp_path / "slowmodel.py").write_text(SLOW_EVAL_MODEL)
    marker = tmp_path / "validating"
    env = {**ENV, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tmp_path}"}
    common = [
        "-c",
        DIGITS,
        "model.name=slowmodel:slow_eval",
        f"model.args={{marker: '{marker}'}}",
        "data.eval_batch_size=2",
        "trainer.progress=off",
        "logging.tensorboard=false",
        "trainer.epochs=2",
        f"run.dir={tmp_path / 'run'}",
        "scheduler.name=none",
        "optimizer.name=sgd",
    ]
    log = tmp_path / "log"
    proc = _start(log, "train", *common, env=env)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    seconds = _stop(proc, signal.SIGINT)
    text = log.read_text()
    assert proc.returncode == 130, text
    assert seconds < STOP_SECONDS, text
    saved = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert saved["epoch"] == 0  # epoch 1 trained ...
    assert saved["pending_epoch"]["train_loss"] > 0  # ... its validation pending
    marker.unlink()
    resumed = subprocess.run(
        [sys.executable, "-m", "kiln", "train", *common, "--resume", "auto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "its validation next" in resumed.stdout
    lines = [json.loads(s) for s in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert lines[0]["train_loss"] == pytest.approx(saved["pending_epoch"]["train_loss"])


def test_ctrl_c_while_decoding_stops_the_workers(imagenette_dir: Path, tmp_path: Path) -> None:
    photos = photo_subset(imagenette_dir, tmp_path / "photos", classes=10, per_class=300, splits=("train",))
    log = tmp_path / "log"
    proc = _start(
        log, "check-data", "-c", DIGITS, "data.source=folder", f"data.root={photos}", "data.image_size=224"
    )
    _wait_for_text(log, "checking", proc)
    time.sleep(0.5)
    seconds = _stop(proc, signal.SIGINT)
    assert proc.returncode == 130, log.read_text()
    assert seconds < STOP_SECONDS
    assert "problems:" not in log.read_text()  # stopped while decoding, not after the report
    assert "Traceback" not in log.read_text()
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(photos)], capture_output=True, text=True).stdout.split()
    assert left == []  # no worker process outlived kiln


class SlowTestLogger(kiln.Callback):
    """Test helper: announces the test evaluation's end, then takes its time over it (a slow upload)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_eval_end(self, split: str, metrics: dict[str, float], outputs: object = None) -> None:
        if split == "test":
            self.marker.write_text("test evaluated")
            time.sleep(60)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGUSR1, 138)])
def test_a_signal_after_the_last_epoch_says_in_one_line_what_was_kept(
    tmp_path: Path, sig: int, code: int
) -> None:
    marker, log = tmp_path / "marker", tmp_path / "log"
    callback = f"callbacks=[{{name: 'tests.test_signals:SlowTestLogger', args: {{marker: '{marker}'}}}}]"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = _start(
        log, "train", "-c", DIGITS, f"run.dir={tmp_path / 'run'}", "trainer.epochs=2", callback, env=env
    )
    deadline = time.monotonic() + 120
    while not marker.exists():  # waits for the run to reach the state, not for a time
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    _stop(proc, sig)
    errors = [line for line in log.read_text().splitlines() if line.startswith("kiln: error:")]
    assert proc.returncode == code
    assert len(errors) == 1, log.read_text()
    assert "after the last epoch: training is complete" in errors[0]
