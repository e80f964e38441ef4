"""The command line as a user runs it: real subprocesses, real files."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_kiln

pytestmark = pytest.mark.slow  # `kiln train` subprocesses


def test_train_digits_end_to_end(tmp_path: Path) -> None:
    proc = run_kiln(
        "train", "-c", str(ROOT / "configs/digits.yaml"), f"run.dir={tmp_path}", "trainer.epochs=3"
    )
    assert "test accuracy:" in proc.stdout
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["trainer"]["epochs"] == 3
    assert resolved["run"]["dir"] == str(tmp_path)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_command(tmp_path: Path) -> None:
    run_kiln("train", "-c", str(ROOT / "configs/digits.yaml"), f"run.dir={tmp_path}", "trainer.epochs=2")
    proc = run_kiln(
        "train",
        "-c",
        str(ROOT / "configs/digits.yaml"),
        f"run.dir={tmp_path}",
        "trainer.epochs=3",
        "--resume",
        str(tmp_path / "checkpoints/last.pt"),
        check=False,
    )
    # a different epoch count changes the schedule: allowed (the model is the same), trains one more epoch
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(s)["epoch"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]


def test_resume_with_other_model_is_refused(tmp_path: Path) -> None:
    run_kiln("train", "-c", str(ROOT / "configs/digits.yaml"), f"run.dir={tmp_path}", "trainer.epochs=1")
    proc = run_kiln(
        "train",
        "-c",
        str(ROOT / "configs/digits.yaml"),
        f"run.dir={tmp_path}",
        "model.name=mlp",
        "--resume",
        str(tmp_path / "checkpoints/last.pt"),
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "the model differs" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file() -> None:
    proc = run_kiln("train", "-c", "nope.yaml", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "config file not found: nope.yaml" in proc.stderr


def test_resume_refuses_a_changed_model_setting_and_takes_the_same_one(tmp_path: Path) -> None:
    run_kiln("train", "-c", str(ROOT / "configs/digits.yaml"), f"run.dir={tmp_path}", "trainer.epochs=1")
    path = tmp_path / "checkpoints/last.pt"
    args = ["train", "-c", str(ROOT / "configs/digits.yaml"), f"run.dir={tmp_path}", "--resume", str(path)]
    proc = run_kiln(*args, "model.pca_init=true", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "model.pca_init: False -> True" in proc.stderr
    run_kiln(*args, "trainer.epochs=2")
    assert [json.loads(s)["epoch"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
