"""Faults and bad input against a real `kiln train` subprocess: signals, kill -9 at random moments
(including mid-checkpoint), non-finite losses, damaged data. Every case ends in a correct result or a
clear one-line error, and nothing already saved is lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from kiln import checkpoint
from tests.conftest import ROOT, STOP_SECONDS, run_kiln, write_png_folder

pytestmark = pytest.mark.slow  # real `kiln train` subprocesses, signalled and killed

DIGITS = str(ROOT / "configs/digits.yaml")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
# slow enough to interrupt mid-epoch: batch 4, ~320 steps per epoch
SLOW = [
    "data.batch_size=4",
    "trainer.progress=off",
    "logging.tensorboard=false",
    "trainer.log_every_n_steps=10",
]


def _train_cmd(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kiln", "train", "-c", DIGITS, f"run.dir={run}", *SLOW, *extra]


def _train(run: Path, *extra: str) -> subprocess.CompletedProcess:
    """A whole ``kiln train`` of the run, to its end."""
    return subprocess.run(_train_cmd(run, *extra), env=ENV, capture_output=True, text=True, timeout=300)


def _start(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        _train_cmd(run, *extra),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


def test_ctrl_c_saves_prints_resume_and_resumed_run_equals_straight_run(tmp_path: Path) -> None:
    common = ["trainer.epochs=2", "trainer.checkpoint.every_n_steps=40"]
    straight = tmp_path / "straight"
    run_kiln("train", "-c", DIGITS, f"run.dir={straight}", *SLOW, *common)
    run = tmp_path / "interrupted"
    proc = _start(run, *common)
    _wait_for(run / "checkpoints/last.pt", proc)  # the first mid-epoch checkpoint: training is under way
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with:" in err
    assert "--resume" in err
    assert "Traceback" not in err
    saved = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert saved["data_state"]["position"] > 0  # stopped mid-epoch, position recorded
    # resume exactly as printed: the run ends with weights bit-identical to the uninterrupted one
    cmd = err.split("Resume with:")[1].strip().split()
    assert cmd[:2] == ["kiln", "train"]
    subprocess.run(
        [sys.executable, "-m", "kiln", *cmd[1:], "trainer.progress=off"],
        env=ENV,
        check=True,
        capture_output=True,
        timeout=300,
    )
    a, b = _weights(straight / "checkpoints/last.pt"), _weights(run / "checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


SLOW_CALLBACK = """
import time
from pathlib import Path
from kiln import Callback

class Slow(Callback):
    def __init__(self, marker):
        self.marker = Path(marker)

    def on_batch_end(self, step, loss, lr):
        if step >= 2:  # step 1's checkpoint is written (checkpointing runs after every other callback)
            self.marker.touch()
        time.sleep(1.0)  # a long step: both signals land inside one
"""


def test_second_ctrl_c_exits_at_once_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "slowcb.py").write_text(SLOW_CALLBACK)
    marker, run = tmp_path / "started", tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(
            run,
            "trainer.checkpoint.every_n_steps=1",
            f"callbacks=[{{name: 'slowcb:Slow', args: {{marker: '{marker}'}}}}]",
        ),
        env={**ENV, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tmp_path}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(marker, proc)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # first: stop after this step, checkpoint, print the resume command ...
    time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)  # ... second, before that happens: leave now
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "second interrupt, exiting now" in err, err
    assert "Resume with:" not in err
    assert "Traceback" not in err
    assert time.monotonic() - t0 < STOP_SECONDS
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] >= 1  # the last complete checkpoint is intact


def test_sigterm_exits_143_with_checkpoint(tmp_path: Path) -> None:
    proc = _start(tmp_path, "trainer.epochs=3")
    _wait_for(tmp_path / "metrics.jsonl", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err
    checkpoint.load(tmp_path / "checkpoints/last.pt")


def test_kill_9_at_random_moments_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    """A checkpoint every step, killed at 8 random moments: each time `--resume auto` finds a valid file."""
    rng = random.Random(0)
    run = tmp_path / "run"
    args = ["trainer.epochs=2", "trainer.checkpoint.every_n_steps=1"]
    for _ in range(8):
        proc = _start(run, *args, "--resume", "auto")
        time.sleep(rng.uniform(2.5, 5.0))  # process start-up is ~2 s; then checkpoints are being written
        proc.kill()
        proc.wait()
        files = list((run / "checkpoints").glob("*.pt")) if (run / "checkpoints").exists() else []
        for f in files:
            checkpoint.load(f)  # every file present is complete (temp files are never named *.pt)
    done = _train(run, *args, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


def test_resume_auto_falls_back_when_newest_is_damaged(tmp_path: Path) -> None:
    run_kiln(
        "train",
        "-c",
        DIGITS,
        f"run.dir={tmp_path}",
        "trainer.epochs=2",
        "trainer.checkpoint.every_n_epochs=1",
        "logging.tensorboard=false",
    )
    last = tmp_path / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a disk error, say
    os.utime(last)
    proc = run_kiln(
        "train",
        "-c",
        DIGITS,
        f"run.dir={tmp_path}",
        "trainer.epochs=3",
        "--resume",
        "auto",
        "logging.tensorboard=false",
    )
    assert "skipping" in proc.stdout
    assert "resuming from" in proc.stdout
    assert "epoch-2.pt" in proc.stdout


_calls = 0


def nan_after_60(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss that turns NaN at step 61 (in epoch 2 of digits at batch 32: 41 steps an epoch)."""
    global _calls
    _calls += 1
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss * float("nan") if _calls > 60 else loss


def test_nan_loss_stops_with_step_and_keeps_good_checkpoints(tmp_path: Path) -> None:
    proc = run_kiln(
        "train",
        "-c",
        DIGITS,
        f"run.dir={tmp_path}",
        "trainer.epochs=3",
        "logging.tensorboard=false",
        "trainer.loss=tests.test_reliability:nan_after_60",
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "non-finite loss (nan) at epoch 2, step 61" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    saved = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model_state_dict"].values())
    other = run_kiln(
        "train",
        "-c",
        DIGITS,
        f"run.dir={tmp_path}",
        "optimizer.name=sgd",
        "--resume",
        str(tmp_path / "checkpoints/last.pt"),
        check=False,
    )
    assert other.returncode == 2, other.stderr
    assert "optimizer.name: 'adamw' -> 'sgd'" in other.stderr


def test_nan_skip_mode_finishes_and_counts(tmp_path: Path) -> None:
    proc = run_kiln(
        "train",
        "-c",
        DIGITS,
        f"run.dir={tmp_path}",
        "trainer.epochs=2",
        "trainer.loss=tests.test_reliability:nan_after_60",
        "trainer.on_nan=skip",
        "logging.tensorboard=false",
        check=False,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert proc.returncode == 0, proc.stderr
    assert summary["skipped_steps"] > 0


def test_bad_images_error_skip_and_check_data(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=20)
    (root / "train/a/3.png").write_bytes(b"\x89PNG\r\n truncated")
    (root / "train/b/empty.png").write_bytes(b"")
    Image.new("RGB", (12, 12)).save(
        root / "train/b/notes.png", format="JPEG"
    )  # a JPEG named .png still decodes
    common = [
        "data.source=folder",
        f"data.root={root}",
        "data.batch_size=8",
        "trainer.epochs=1",
        "logging.tensorboard=false",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    proc = run_kiln("train", "-c", DIGITS, f"run.dir={tmp_path / 'r1'}", *common, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "3.png: cannot read image" in proc.stderr
    assert "Traceback" not in proc.stderr
    run_kiln("train", "-c", DIGITS, f"run.dir={tmp_path / 'r2'}", *common, "data.on_bad_sample=skip")
    summary = json.loads((tmp_path / "r2/summary.json").read_text())
    assert len(summary["skipped_samples"]) == 2
    assert any("empty.png" in s for s in summary["skipped_samples"])
    check = run_kiln("check-data", "-c", DIGITS, *common, check=False)
    assert check.returncode == 1, check.stdout
    assert "problems: 2" in check.stdout
    assert "3.png" in check.stdout


def test_csv_duplicates_and_bad_rows_are_named(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=10)
    rows = "".join(f"train/{c}/{i}.png,{c}\n" for c in "ab" for i in range(10))
    (root / "train.csv").write_text("filepath,label\n" + rows + "train/a/1.png,a\n")
    (root / "test.csv").write_text("filepath,label\ntest/a/0.png,a\ntest/b/0.png,zebra\n")
    common = [
        "data.source=csv",
        f"data.root={root}",
        "data.batch_size=4",
        "trainer.epochs=1",
        "logging.tensorboard=false",
    ]
    proc = run_kiln("train", "-c", DIGITS, f"run.dir={tmp_path / 'r'}", *common, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "train.csv:22: duplicate of row 3" in proc.stderr
    check = run_kiln("check-data", "-c", DIGITS, *common, check=False)
    assert "test.csv:3: label 'zebra'" in check.stdout
    assert check.returncode == 1, check.stdout


def test_unwritable_run_dir_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_kiln("train", "-c", DIGITS, f"run.dir={blocker / 'run'}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "run.dir: cannot write" in proc.stderr
    assert "epoch" not in proc.stdout


def test_a_folder_smaller_than_one_batch_trains_in_batches_of_its_size(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=3)
    proc = run_kiln(
        "train",
        "-c",
        DIGITS,
        "data.source=folder",
        f"data.root={root}",
        f"run.dir={tmp_path / 'r'}",
        "trainer.epochs=2",
        "data.val_split=0",
    )
    assert "fewer than data.batch_size 32: batches of 6 instead" in proc.stdout


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    from kiln.data.decode import open_image
    from kiln.errors import DataError
    from kiln.spec import ImageSpec

    big = tmp_path / "bomb.png"
    Image.new("L", (12_000, 8_000)).save(big)  # 96 Mpx > PIL's bound; compresses to a few kB
    with pytest.raises(DataError, match="bomb.png: cannot read image"):
        open_image(big, ImageSpec(1, (28, 28), "squash"))


def test_a_second_train_into_a_live_run_folder_is_refused_and_a_dead_one_holds_nothing(
    tmp_path: Path,
) -> None:
    first = _start(tmp_path, "trainer.epochs=3")
    _wait_for(tmp_path / "metrics.jsonl", first)
    second = subprocess.run(
        [sys.executable, "-m", "kiln", "train", "-c", DIGITS, f"run.dir={tmp_path}", *SLOW],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2, second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert second.stderr.strip().count("\n") == 0
    assert "choose another run.dir" in second.stderr
    first.kill()  # a dead process: the kernel released its lock
    first.wait()
    resumed = _train(tmp_path, "trainer.epochs=1", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr


def test_kill_resume_cycles_keep_each_epoch_once_and_end_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """Killed at random moments (mid-epoch, mid-checkpoint, during the final test evaluation and summary),
    resumed with --resume auto each time: metrics.jsonl holds every epoch once, in order, and the result is
    the uninterrupted run's, bit for bit."""
    args = ["trainer.epochs=4", "trainer.checkpoint.every_n_steps=25", "data.batch_size=16"]
    straight = tmp_path / "straight"
    run_kiln("train", "-c", DIGITS, f"run.dir={straight}", *SLOW, *args)
    rng, run = random.Random(1), tmp_path / "run"
    for _ in range(7):
        proc = _start(run, *args, "--resume", "auto")
        time.sleep(rng.uniform(2.0, 6.0))
        proc.kill()
        proc.wait()
    done = _train(run, *args, "--resume", "auto")
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    a, b = _weights(straight / "checkpoints/last.pt"), _weights(run / "checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (straight, run))
    assert s1["test"]["accuracy"] == s2["test"]["accuracy"]
    assert s1["best_epoch"] == s2["best_epoch"]


SLOW_TEST_EVAL = """
import time
from pathlib import Path
from kiln import Callback

class SlowTest(Callback):
    def __init__(self, marker):
        self.marker = Path(marker)

    def on_eval_end(self, split, metrics, outputs=None):
        if split == "test":  # the final test evaluation is running: the kill lands here
            self.marker.touch()
            time.sleep(30)
"""


def test_killed_during_the_final_test_evaluation_reruns_to_the_same_summary(tmp_path: Path) -> None:
    (tmp_path / "slowtest.py").write_text(SLOW_TEST_EVAL)
    args = ["trainer.epochs=2", "logging.tensorboard=false", "trainer.progress=off"]
    straight = tmp_path / "straight"
    run_kiln("train", "-c", DIGITS, f"run.dir={straight}", *args)
    run, marker = tmp_path / "run", tmp_path / "in-test-eval"
    cb = f"callbacks=[{{name: 'slowtest:SlowTest', args: {{marker: '{marker}'}}}}]"
    env = {**ENV, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tmp_path}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "train", "-c", DIGITS, f"run.dir={run}", *args, cb],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(marker, proc, timeout=120)
    proc.kill()
    proc.wait()
    assert not (run / "summary.json").exists()  # killed before it was written: no torn or stale summary
    rerun = subprocess.run(
        [sys.executable, "-m", "kiln", "train", "-c", DIGITS, f"run.dir={run}", *args, "--resume", "auto"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stdout, rerun.stderr
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (straight, run))
    assert s2["test"]["accuracy"] == s1["test"]["accuracy"]
    assert s2["epochs_run"] == 2
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
