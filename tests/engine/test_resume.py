"""What a checkpoint holds and what `restore` puts back, in process (the bit-identical end-to-end resumes
are in test_trainer.py and test_reliability.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln import checkpoint as ckpt
from kiln.config import load_config
from kiln.data import build
from kiln.engine.callbacks import CallbackList, EarlyStopping
from kiln.engine.checkpointing import Checkpointing
from kiln.engine.distributed import Dist
from kiln.engine.loop import TrainState
from kiln.engine.resume import find_resume, restore
from kiln.engine.setup import build_parts
from kiln.engine.trainer import fit
from kiln.errors import CheckpointError
from kiln.paths import RunDir
from tests.conftest import ROOT

CPU = torch.device("cpu")


def _cfg(run: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        ROOT / "configs/digits.yaml",
        [
            f"run.dir={run}",
            "trainer.progress=off",
            "logging.tensorboard=false",
            "trainer.epochs=2",
            "trainer.early_stopping={patience: 5}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume")
    fit(_cfg(path))
    return path


def test_checkpoint_contents(run: Path) -> None:
    # 1,293 train images at batch 32: 41 optimizer steps per epoch
    saved = ckpt.load(RunDir(run).last)
    assert (
        saved["epoch"] == 2
        and saved["step"] == 2 * 41
        and saved["data_state"] == {"epoch": 1, "position": 41}  # all of epoch index 1
    )
    assert set(saved["callbacks"]) == {"MetricsLog#0", "ProgressBar#0", "EarlyStopping#0", "Checkpointing#0"}
    assert saved["callbacks"]["Checkpointing#0"] == {
        "best": saved["best_metric"],
        "best_epoch": saved["best_epoch"],
    }
    assert saved["classes"] == [str(i) for i in range(10)] and saved["preprocess"]["image_size"] == [8, 8]
    assert saved["rng_per_rank"] is None and isinstance(saved["rng"]["torch"], torch.Tensor)
    assert saved["config"]["trainer"]["epochs"] == 2 and saved["kiln_version"]


def _fresh(run: Path, *extra: str) -> tuple[object, ...]:
    cfg = _cfg(run, *extra)
    data = build(cfg.data, 0, CPU)
    parts = build_parts(cfg, data, CPU, Dist())
    state = TrainState()
    es, cp = (
        EarlyStopping("val_loss", "min", 5, 0.0),
        Checkpointing(RunDir(run), dict, cfg.trainer.checkpoint, False),
    )
    return cfg, data, parts, state, CallbackList([es, cp]), es, cp


def test_restore_puts_everything_back(run: Path) -> None:
    cfg, data, parts, state, callbacks, es, cp = _fresh(run)
    saved = ckpt.load(RunDir(run).last)
    restore(str(RunDir(run).last), cfg, parts, state, callbacks, data, Dist())  # type: ignore[arg-type]
    assert (state.epoch, state.step) == (2, 82) and data.train.state_dict() == saved["data_state"]  # type: ignore[attr-defined]
    assert (es.best, es.wait) == (
        saved["callbacks"]["EarlyStopping#0"]["best"],
        saved["callbacks"]["EarlyStopping#0"]["wait"],
    )
    assert (cp.best, cp.best_epoch) == (saved["best_metric"], saved["best_epoch"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(parts.model.state_dict().values(), saved["model_state_dict"].values(), strict=True)
    )
    assert parts.scheduler.last_epoch == 82 and torch.equal(torch.get_rng_state(), saved["rng"]["torch"])  # type: ignore[attr-defined]


def test_a_checkpoint_from_before_checkpointing_was_a_callback_keeps_its_best(
    run: Path, tmp_path: Path
) -> None:
    saved = ckpt.load(RunDir(run).last)
    del saved["callbacks"]["Checkpointing#0"]
    old = tmp_path / "old.pt"
    ckpt.save(saved, old)
    cfg, data, parts, state, callbacks, _, cp = _fresh(run)
    restore(str(old), cfg, parts, state, callbacks, data, Dist())  # type: ignore[arg-type]
    assert (cp.best, cp.best_epoch) == (saved["best_metric"], saved["best_epoch"])


def test_other_classes_or_model_are_refused_naming_the_difference(run: Path) -> None:
    cfg, data, parts, state, callbacks, _, _ = _fresh(run, "model.name=mlp")
    with pytest.raises(
        CheckpointError, match=r"the model differs from the checkpoint's \(model.name: 'lenet' -> 'mlp'\)"
    ):
        restore(str(RunDir(run).last), cfg, parts, state, callbacks, data, Dist())  # type: ignore[arg-type]
    data.classes = ["a", "b"]  # type: ignore[attr-defined]
    with pytest.raises(CheckpointError, match="trained on classes"):
        restore(str(RunDir(run).last), cfg, parts, state, callbacks, data, Dist())  # type: ignore[arg-type]


def test_resume_auto_skips_a_damaged_newest_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = RunDir(tmp_path)
    r.checkpoints.mkdir()
    r.epoch_checkpoint(1).write_bytes(RunDir(run).last.read_bytes())
    r.last.write_bytes(b"torn")
    assert find_resume(r) == str(r.epoch_checkpoint(1)) and "skipping" in capsys.readouterr().out
