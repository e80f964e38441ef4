"""The LR range test (``kiln lr-find``): fastai's suggestion rules and smoothing against fastai's own code
written out here, the test on configs/digits.yaml, a frozen backbone (the head alone trains, the run
folder is left alone) and Ctrl-C. The tests that train are marked slow one by one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.cli import main
from kiln.config import Config, load_config
from kiln.engine.distributed import Dist
from kiln.engine.feeds import CachedFeatures
from kiln.engine.lr_find import Curve, RangeTest, SmoothLoss, lr_find, range_test, steep, suggest, valley
from kiln.engine.setup import build_run, seed_everything
from kiln.engine.trainer import fit
from kiln.paths import RunDir
from tests.conftest import ROOT, STOP_SECONDS, run_kiln, toy_photos, write_png_folder

DIGITS = str(ROOT / "configs/digits.yaml")


def fastai_valley(lrs: list[float], losses: list[float]) -> float:
    """fastai 2.7's ``valley`` (fastai/callback/schedule.py), line for line."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def fastai_steep(lrs: torch.Tensor, losses: torch.Tensor) -> float:
    """fastai's ``steep``, in float64."""
    grads = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    return lrs[grads.argmin()].item()


def synthetic_curve(seed: int, n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """A range test's shape: flat, a fall, a minimum, a rise, with noise and a false dip on the plateau."""
    lrs = 1e-7 * (10 / 1e-7) ** (np.arange(n) / n)
    x = np.log10(lrs)
    fall = 1 / (1 + np.exp(-(x + 2.5) * 3))  # 0 -> 1 around lr 3e-3
    rise = np.exp((x - 0.3) * 2.0)
    dip = 0.08 * np.exp(-((x + 5) ** 2) * 4)
    rng = np.random.default_rng(seed)
    return lrs, 2.3 - 1.2 * fall + rise - dip + rng.normal(0, 0.02, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_valley_equals_fastai(seed: int) -> None:
    lrs, losses = synthetic_curve(seed)
    assert lrs[valley(losses)] == fastai_valley(list(lrs), list(losses))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steep_equals_fastai(seed: int) -> None:
    lrs, losses = synthetic_curve(seed)
    expected = fastai_steep(torch.tensor(lrs, dtype=torch.float64), torch.tensor(losses, dtype=torch.float64))
    assert lrs[steep(lrs, losses)] == pytest.approx(expected, rel=1e-12)


def test_smoothing_is_fastais_bias_corrected_average() -> None:
    losses = torch.tensor(synthetic_curve(0)[1][:20], dtype=torch.float64)
    smooth = SmoothLoss(0.98)
    ours = [smooth.add(float(v)) for v in losses]
    value, fastai = torch.tensor(0.0, dtype=torch.float64), []
    for count, loss in enumerate(losses, start=1):  # fastai's AvgSmoothLoss.accumulate and .value
        value = torch.lerp(loss, value, 0.98)
        fastai.append(float(value / (1 - 0.98**count)))
    assert ours == pytest.approx(fastai, rel=1e-12)


def test_suggestions_leave_out_the_first_tenth_and_the_last_five_points() -> None:
    lrs, losses = synthetic_curve(0, n=100)
    losses[:10] = 0.0  # lower than anything after: a minimum only while the first tenth counts
    losses[-5:] = -1.0
    found = suggest(Curve(list(lrs), list(losses), list(losses)), steps=100)
    assert found is not None
    assert found["lr"]["minimum/10"] == lrs[10 + int(np.argmin(losses[10:-5]))] / 10


def test_exponential_schedule_is_fastais() -> None:
    test = RangeTest(1e-6, 1.0, 60)
    assert [test.lr(i) for i in (0, 30, 59)] == pytest.approx([1e-6, 1e-3, 1e-6 * 1e6 ** (59 / 60)])


def test_bad_range_is_one_line_before_the_config_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["lr-find", "-c", "no-such-config.yaml", "--start", "1", "--end", "0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == ["kiln: error: --start 1 and --end 0.1: need 0 < start < end"]


@pytest.mark.slow
def test_digits_losses_fall_then_rise_and_the_suggestion_lies_on_the_fall(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_kiln("lr-find", "-c", DIGITS, f"run.dir={run}", "logging.tensorboard=false", cwd=tmp_path)
    found = json.loads((run / "lr_find/lr_find.json").read_text())
    smoothed, lrs = np.asarray(found["smoothed"]), np.asarray(found["lr"])
    lowest = int(smoothed.argmin())
    assert (run / "lr_find/lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert smoothed[lowest] < smoothed[0] - 0.05  # falls ...
    assert smoothed[-1] > smoothed[lowest] + 0.05  # ... then rises
    assert lrs[0] < found["suggestions"]["valley"] < lrs[lowest]
    assert lrs[0] < found["suggestions"]["steep"] < lrs[lowest]
    assert f"suggested: optimizer.lr={found['suggestions']['valley']:.1e} (valley)" in proc.stdout
    assert sorted(p.name for p in run.iterdir()) == ["lr_find"]  # no checkpoints, metrics, config, log


def _frozen_photos(tmp_path: Path, *extra: str) -> Config:
    root = tmp_path / "imgs"
    if not root.exists():
        write_png_folder(root, ["a", "b", "c"], per_class=10, size=20, splits=("train", "val"))
    return load_config(
        DIGITS,
        [
            *toy_photos(root, tmp_path / "run", tmp_path / "cache"),  # 30 images: 4 batches an epoch
            "model.freeze=backbone",
            "trainer.epochs=1",
            *extra,
        ],
    )


@pytest.mark.slow
def test_frozen_backbone_trains_only_the_head_on_cached_features(tmp_path: Path) -> None:
    seed_everything(0, False)
    run = build_run(_frozen_photos(tmp_path), Dist(), torch.device("cpu"), [])
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    curve = range_test(run, RangeTest(1e-5, 1e-2, 12))
    after = run.model.state_dict()
    assert isinstance(run.feed, CachedFeatures)
    assert len(curve.lrs) == 12  # three epochs of 4 batches
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert [k for k in before if not k.startswith("fc.") and not torch.equal(before[k], after[k])] == []


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
def test_the_run_folder_is_left_alone_while_its_training_holds_it(tmp_path: Path) -> None:
    cfg = _frozen_photos(tmp_path)
    fit(cfg)  # a trained run: checkpoints, metrics.jsonl, config.yaml, train.log
    folder = RunDir(cfg.run_dir)
    with folder.hold():  # as a `kiln train` of the same run would: lr-find must not need the lock
        kept = _files(folder.root)
        lr_find(cfg, RangeTest(1e-5, 0.1, 20))
        now = _files(folder.root)
    assert sorted(set(now) - set(kept)) == ["lr_find/lr_find.json", "lr_find/lr_find.png"]
    assert {k: now[k] for k in kept} == kept


@pytest.mark.slow
def test_sigint_mid_test_exits_130_at_once_and_writes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "kiln", "lr-find", "-c", DIGITS, f"run.dir={run}", "data.batch_size=4"]
    cmd += ["logging.tensorboard=false", "--steps", "1000000", "--end", "1e-3"]  # hours, never diverging
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while "LR range test: 1000000 steps" not in line:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line or proc.poll() is None, proc.communicate()
    time.sleep(1.0)  # well inside the steps
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < STOP_SECONDS
    assert "Traceback" not in err
    assert "kiln: error: interrupted at step" in err
    assert not (run / "lr_find").exists()
