"""TensorBoard and W&B logging on real digits runs, read back from the files they write (no mocks). The
tests on the module's two logged 3-epoch runs are marked slow one by one; the ones that build loggers or
trace a graph without training are unit tests."""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kiln.config import load_config
from kiln.engine.logger_base import trace_model
from kiln.engine.loggers import build_loggers
from kiln.engine.trainer import fit
from kiln.errors import ConfigError
from kiln.paths import RunDir
from tests.conftest import ROOT

DIGITS = ROOT / "configs/digits.yaml"
COMMON = ["trainer.progress=off", "trainer.epochs=3", "trainer.checkpoint.every_n_epochs=1"]
EVERY = 10


def _cfg(run_dir: Path, *overrides: str):
    return load_config(DIGITS, [f"run.dir={run_dir}", *COMMON, f"logging.every_n_steps={EVERY}", *overrides])


def _events(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import (
        DEFAULT_SIZE_GUIDANCE,
        EventAccumulator,
    )

    ea = EventAccumulator(str(log_dir), size_guidance={k: 0 for k in [*DEFAULT_SIZE_GUIDANCE, "tensors"]})
    return ea.Reload()


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    pytest.importorskip("wandb", reason="wandb is an optional extra")
    run_dir = tmp_path_factory.mktemp("logged")
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        summary = fit(_cfg(run_dir, "logging.wandb={mode: offline, project: kiln-tests, tags: [ci]}"))
    return run_dir, summary, out.getvalue()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("plain")
    fit(_cfg(run_dir, "logging.tensorboard=false"))
    return run_dir


def _check_scalars(ea: Any, metrics: list[dict[str, float]]) -> None:
    steps = [m["step"] for m in metrics]
    for key in metrics[0]:
        if key == "step":
            continue
        events = ea.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == steps, key
        for e, m in zip(events, metrics, strict=True):
            assert math.isclose(e.value, m[key], rel_tol=1e-6, abs_tol=1e-9), (key, e.value, m[key])
    per_step = ea.Scalars("step/train_loss")
    assert [e.step for e in per_step] == list(range(EVERY, steps[-1] + 1, EVERY))
    assert len(per_step) == steps[-1] // EVERY
    assert all(math.isfinite(e.value) for e in per_step)
    assert all(e.value > 0 for e in per_step)
    assert [e.step for e in ea.Scalars("step/lr")] == [e.step for e in per_step]


@pytest.mark.slow
def test_tensorboard_scalars_match_metrics_jsonl(logged: tuple[Path, dict[str, Any], str]) -> None:
    run_dir, summary, out = logged
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in out
    ea = _events(run_dir / "tensorboard")
    metrics = _metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["step"] == summary["steps"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "seconds", "lr"} <= set(
        metrics[0]
    )
    _check_scalars(ea, metrics)
    (test_acc,) = ea.Scalars("test/acc")
    assert test_acc.step == summary["steps"]
    assert math.isclose(test_acc.value, summary["test"]["accuracy"], rel_tol=1e-6)


@pytest.mark.slow
def test_tensorboard_images_pr_curves_hparams_graph(logged: tuple[Path, dict[str, Any], str]) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, summary, _ = logged
    assert [p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()] == []  # no hparams subfolder
    ea = _events(run_dir / "tensorboard")
    tags = ea.Tags()
    assert {"train/augmented_samples", "eval/confusion_matrix", "eval/pr_curves"} <= set(tags["images"])
    (grid,) = ea.Images("train/augmented_samples")
    assert grid.step == 0
    assert grid.encoded_image_string.startswith(b"\x89PNG")
    assert grid.width > 64
    (cm,) = ea.Images("eval/confusion_matrix")
    assert cm.step == summary["steps"]
    assert cm.width > 200
    assert sorted(t for t in tags["tensors"] if t.startswith("pr/")) == [
        f"pr/{c}" for c in summary["classes"]
    ]
    assert len(ea.Tensors("pr/3")) == 1
    assert tags["graph"]
    assert any("conv" in n.op.lower() or "conv" in n.name.lower() for n in ea.Graph().node)

    content = ea.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        content
    )
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["optimizer.lr"].number_value == pytest.approx(0.003)
    assert hp["model.name"].string_value == "lenet"
    assert hp["run.seed"].number_value == 0
    (final,) = ea.Scalars("hparams/test_accuracy")
    assert math.isclose(final.value, summary["test"]["accuracy"], rel_tol=1e-6)
    assert ea.Scalars("hparams/best_val_acc")[0].value == pytest.approx(summary["best_metric"])


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a .wandb file (a LevelDB-style log: 32 KiB blocks of CRC|len|type chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            out.append(pb.Record.FromString(buf))
    return out


@pytest.mark.slow
def test_wandb_offline_run(logged: tuple[Path, dict[str, Any], str]) -> None:
    run_dir, summary, out = logged
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (wfile,) = offline.glob("run-*.wandb")
    assert f"wandb sync {offline}" in out
    media = offline / "files/media/images"
    assert list(media.glob("eval/confusion_matrix_*.png"))
    assert list(media.glob("eval/pr_curves_*.png"))
    assert list(media.glob("train/augmented_samples_*.png"))

    records = _wandb_records(wfile)
    (run,) = [r.run for r in records if r.HasField("run")]
    assert list(run.tags) == ["ci"]
    assert run.project == "kiln-tests"
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["optimizer"]["lr"] == 0.003
    assert config["run"]["seed"] == 0
    history: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.HasField("history"):
            row = {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
            for k, v in row.items():
                if not k.startswith("_") and "/_" not in k and v[:1] not in ('"', "{"):
                    history.setdefault(k, []).append((int(row["_step"]), json.loads(v)))
    metrics = _metrics(run_dir)
    assert history["epoch/val_acc"] == [(m["step"], pytest.approx(m["val_acc"])) for m in metrics]
    assert len(history["step/train_loss"]) == summary["steps"] // EVERY
    assert history["test/acc"] == [(summary["steps"], pytest.approx(summary["test"]["accuracy"]))]
    summaries = {i.key: i.value_json for r in records if r.HasField("summary") for i in r.summary.update}
    assert json.loads(summaries["best_epoch"]) == summary["best_epoch"]


@pytest.mark.slow
def test_logging_does_not_change_training(logged: tuple[Path, dict[str, Any], str], plain: Path) -> None:
    assert not (plain / "tensorboard").exists()
    assert not (plain / "wandb").exists()
    for name in ("best.pt", "last.pt", "epoch-1.pt"):
        a = torch.load(logged[0] / "checkpoints" / name, weights_only=True)["model_state_dict"]
        b = torch.load(plain / "checkpoints" / name, weights_only=True)["model_state_dict"]
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


@pytest.mark.slow
def test_resume_keeps_one_consistent_tensorboard_run(
    logged: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(logged[0], run_dir, ignore=shutil.ignore_patterns("wandb"))
    fit(_cfg(run_dir), resume=str(run_dir / "checkpoints/epoch-2.pt"))  # re-runs epoch 3
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    ea = _events(run_dir / "tensorboard")
    _check_scalars(ea, _metrics(run_dir))  # what the first run logged past epoch 2 is purged, not doubled
    assert len(ea.Scalars("test/acc")) == 1
    assert len(ea.Images("eval/pr_curves")) == 1
    assert len(ea.Images("train/augmented_samples")) == 1


def test_wandb_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python spells "not installed"
    with pytest.raises(ConfigError, match=r"pip install 'torchkiln\[wandb\]'"):
        build_loggers(_cfg(tmp_path, "logging.wandb={mode: offline}"), RunDir(tmp_path))


def test_tensorboard_missing_is_a_note_not_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # on by default, but an extra
    assert build_loggers(_cfg(tmp_path), RunDir(tmp_path)) == []
    assert "pip install 'torchkiln[tensorboard]'" in capsys.readouterr().out


def test_loggers_that_are_off_are_not_built(tmp_path: Path) -> None:
    assert build_loggers(_cfg(tmp_path, "logging.tensorboard=false"), RunDir(tmp_path)) == []
    assert (
        build_loggers(
            _cfg(tmp_path, "logging.tensorboard=false", "logging.wandb={mode: disabled}"), RunDir(tmp_path)
        )
        == []
    )
    assert not (tmp_path / "tensorboard").exists()


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn, self.drop = nn.BatchNorm2d(1), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.drop(self.bn(x))}  # a dict output: strict tracing refuses it


def test_graph_tracing_touches_no_rng_and_no_batchnorm_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    models = (nn.Sequential(nn.BatchNorm2d(1), nn.Dropout(0.5), nn.Conv2d(1, 2, 3)), _DictOut())
    sample = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with SummaryWriter(str(tmp_path)) as w:
        for model in models:
            model.train()
            before = {k: v.clone() for k, v in model.state_dict().items()}
            trace_model(model, sample, w.add_graph)
            assert model.training
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(states[0], torch.get_rng_state())
    assert (states[1] == np.random.get_state()[1]).all()
    assert states[2] == random.getstate()
    out = capsys.readouterr().out
    assert out.count("model graph not logged") == 1, out  # the dict-output model only
    assert _events(tmp_path).Tags()["graph"]
