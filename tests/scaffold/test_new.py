"""`kiln new` as a new user runs it: generate, train from inside the project, run its own smoke test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_kiln

pytestmark = pytest.mark.slow  # every test runs kiln (and the new project's own tests) as subprocesses

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env=env or ENV)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _train_and_smoke_test(tmp_path: Path, template: str) -> dict:
    """`kiln new --template TEMPLATE`, one epoch of training from inside the project, then the project's own
    tests; returns the run's summary."""
    run_kiln("new", str(tmp_path / "demo"), "--template", template)
    project = tmp_path / "demo"
    extra: list[str] = []
    if template in ("folder", "csv", "photos"):
        sys.path.insert(0, str(project))
        try:
            from make_sample_data import ensure_sample_data

            extra = ensure_sample_data(tmp_path / "data")
        finally:
            sys.path.remove(str(project))
            sys.modules.pop("make_sample_data", None)
    _run(
        [
            sys.executable,
            "-m",
            "kiln",
            "train",
            "-c",
            "config.yaml",
            "trainer.epochs=1",
            "trainer.progress=off",
            "logging.tensorboard=false",
            *extra,
        ],
        cwd=project,
    )
    summary = json.loads((project / "runs" / "demo" / "summary.json").read_text())
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=project)
    return summary


@pytest.mark.parametrize("template", ["basic", "folder", "csv", "transfer"])
def test_template_trains_and_its_smoke_test_passes(tmp_path: Path, template: str) -> None:
    summary = _train_and_smoke_test(tmp_path, template)
    assert summary["epochs_run"] == 1
    assert "test" in summary


def test_the_photos_template_trains_on_train_and_val_and_its_smoke_test_passes(tmp_path: Path) -> None:
    summary = _train_and_smoke_test(tmp_path, "photos")
    assert summary["epochs_run"] == 1
    assert "test" not in summary  # its sample data is train/ + val/: nothing is measured as a test split


def test_new_project_uses_its_own_plugins(tmp_path: Path) -> None:
    run_kiln("new", str(tmp_path / "demo"))
    project = tmp_path / "demo"
    _run(
        [
            sys.executable,
            "-m",
            "kiln",
            "train",
            "-c",
            "config.yaml",
            "trainer.epochs=2",
            "logging.tensorboard=false",
        ],
        cwd=project,
    )
    m = [json.loads(s) for s in (project / "runs/demo/metrics.jsonl").read_text().splitlines()]
    assert "val_worst_class_recall" in m[0]  # metrics.py
    assert "val_balanced_accuracy" in m[0]  # kiln's own

    state = torch.load(project / "runs/demo/checkpoints/last.pt", weights_only=True)
    assert "StopAtAccuracy#0" in state["callbacks"]  # callbacks.py, with its state
    # replace the model in models.py by another one, as a user would, and train again
    models = project / "models.py"
    models.write_text(
        models.read_text()
        + textwrap.dedent("""
        @kiln.register_model("tiny_mlp")
        def tiny_mlp(num_classes, in_channels, image_size):
            features = in_channels * image_size[0] * image_size[1]
            return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    """)
    )
    _run(
        [
            sys.executable,
            "-m",
            "kiln",
            "train",
            "-c",
            "config.yaml",
            "model.name=tiny_mlp",
            "model.args={}",
            "trainer.epochs=1",
            "run.dir=runs/mlp",
            "logging.tensorboard=false",
        ],
        cwd=project,
    )
    assert (project / "runs/mlp/summary.json").is_file()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    proc = run_kiln("new", str(tmp_path / "taken"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "not empty" in proc.stderr
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_entry_point_plugin_from_installed_package(tmp_path: Path) -> None:
    """A package installed with `[project.entry-points."kiln.models"]` (here: its module and .dist-info
    written on a path of its own, which is what an install leaves behind) is found by name."""
    site = tmp_path / "site"
    (site / "kiln_tinynet").mkdir(parents=True)
    (site / "kiln_tinynet" / "__init__.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def make(num_classes, in_channels, image_size):
            features = in_channels * image_size[0] * image_size[1]
            return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    """)
    )
    dist = site / "kiln_tinynet-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kiln-tinynet\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kiln.models]\ntinynet = kiln_tinynet:make\n")
    env = {**ENV, "PYTHONPATH": f"{site}{os.pathsep}{ROOT / 'src'}"}
    _run(
        [
            sys.executable,
            "-m",
            "kiln",
            "train",
            "-c",
            str(ROOT / "configs/digits.yaml"),
            "model.name=tinynet",
            "trainer.epochs=1",
            f"run.dir={tmp_path / 'run'}",
            "logging.tensorboard=false",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert (tmp_path / "run/summary.json").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln",
            "train",
            "-c",
            str(ROOT / "configs/digits.yaml"),
            "model.name=tinynett",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2, bad.stderr
    assert "did you mean 'tinynet'" in bad.stderr


def test_the_command_line_offers_every_template() -> None:
    from kiln.scaffold import TEMPLATES

    shown = subprocess.run(
        [sys.executable, "-m", "kiln", "new", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for template in TEMPLATES:
        assert template in shown, shown
