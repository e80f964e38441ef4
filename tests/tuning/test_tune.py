"""`kiln tune` with a real local Ray on the CPU: ASHA stops trials, best.yaml reproduces, resume works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.errors import ConfigError
from kiln.tuning.space import load_space
from tests.conftest import ROOT

pytest.importorskip("ray.tune", reason="ray[tune] is an optional extra (pip install 'torchkiln[tune]')")

DIGITS = str(ROOT / "configs/digits.yaml")
SPACE = str(ROOT / "configs/spaces/digits.yaml")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_AUTH_MODE": "disabled"}


def _tune(out: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", "tune", "-c", DIGITS, "--space", SPACE, "--out", str(out),
                           *extra], capture_output=True, text=True, env=ENV, timeout=timeout)  # fmt: skip


def test_asha_search_stops_trials_and_best_yaml_reproduces(tmp_path: Path) -> None:
    # (its duration, ~30 s on 2 cores against the 2 minutes, is a measured figure, not asserted)
    proc = _tune(tmp_path / "t", "--samples", "4", "trainer.epochs=4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "t/results.json").read_text())
    trials = res["trials"]
    assert len(trials) == 4 and not any(t["error"] for t in trials)
    assert any(t["stopped_early"] for t in trials) and any(t["epochs"] == 4 for t in trials)
    assert (tmp_path / "t/trials.png").stat().st_size > 0 and Path(res["best_checkpoint"]).is_file()
    assert "stopped early" in proc.stdout and "best config" in proc.stdout
    # best.yaml is a complete config: retrain it independently and land near the reported metric
    from kiln.engine.trainer import fit

    summary = fit(load_config(res["best_config"], [f"run.dir={tmp_path / 'retrain'}", "trainer.progress=off",
                                                   "logging.tensorboard=false"]))  # fmt: skip
    assert abs(summary["best_metric"] - res["best_metric"]) < 0.03


@pytest.mark.parametrize(("space", "message"), [
    ("optimizer.lrr: {loguniform: [1.0e-4, 1.0e-1]}", "optimizer.lrr: unknown key — did you mean 'optimizer.lr'?"),
    ("optimizer.lr: {logunifrom: [1.0e-4, 1.0e-1]}", "unknown distribution 'logunifrom' — did you mean 'loguniform'?"),
    ("optimizer.lr: {loguniform: [-1, 1]}", "loguniform needs low > 0"),
    ("data.source: {choice: [digits, cifar11]}", "data.source: 'cifar11' is not allowed — did you mean 'cifar10'?"),
    ("optimizer.lr: 0.1", "expected one distribution"),
])  # fmt: skip
def test_space_errors_before_any_trial(tmp_path: Path, space: str, message: str) -> None:
    (tmp_path / "space.yaml").write_text(space + "\n")
    with pytest.raises(ConfigError) as e:
        load_space(tmp_path / "space.yaml", DIGITS, [])
    assert message in str(e.value)
    proc = subprocess.run([sys.executable, "-m", "kiln", "tune", "-c", DIGITS, "--space", str(tmp_path / "space.yaml"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "o").exists()


def test_interrupted_search_resumes(tmp_path: Path) -> None:
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "kiln", "tune", "-c", DIGITS, "--space", SPACE, "--out", str(out), "--samples", "4",
           "--scheduler", "fifo", "--max-concurrent", "1", "trainer.epochs=3"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # interrupt once the first trial has reported
        if any(p.stat().st_size > 0 for p in out.glob("search/*/result.json")):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    first = (
        json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {"trials": []}
    )
    assert sum(t["epochs"] == 3 for t in first["trials"]) < 4  # it really was cut short
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert len(trials) == 4 and all(t["epochs"] == 3 for t in trials)
