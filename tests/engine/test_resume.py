"""What a checkpoint holds and what ``Run.load_state_dict`` puts back, in process (the bit-identical
end-to-end resumes are in test_trainer.py and test_reliability.py). One short run for the module (two
epochs of 10 steps, 320 train images): unit tests of the resume contents."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln import checkpoint as ckpt
from kiln.config import load_config
from kiln.engine.distributed import Dist
from kiln.engine.resume import check_compatible, find_resume
from kiln.engine.run import Run
from kiln.engine.setup import build_run
from kiln.engine.trainer import fit
from kiln.errors import CheckpointError
from kiln.paths import RunDir
from tests.conftest import ROOT, one_thread

CPU = torch.device("cpu")


def _cfg(run: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        ROOT / "configs/digits.yaml",
        [
            f"run.dir={run}",
            "trainer.progress=off",
            "logging.tensorboard=false",
            "trainer.epochs=2",
            "data.train_limit=320",  # 10 optimizer steps an epoch at batch 32
            "trainer.early_stopping={patience: 5}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume")
    with one_thread():
        fit(_cfg(path))
    return path


def test_checkpoint_contents(run: Path) -> None:
    # 320 train images at batch 32: 10 optimizer steps per epoch
    saved = ckpt.load(RunDir(run).last)
    assert saved["epoch"] == 2
    assert saved["step"] == 2 * 10
    assert saved["data_state"] == {"epoch": 1, "position": 10}  # all of epoch index 1
    assert set(saved["callbacks"]) == {"MetricsLog#0", "ProgressBar#0", "EarlyStopping#0"}
    assert saved["checkpoints"] == {"best": saved["best_metric"], "best_epoch": saved["best_epoch"]}
    assert saved["format"] == ckpt.FORMAT
    assert saved["recipe"]["classes"] == [str(i) for i in range(10)]
    assert saved["recipe"]["preprocess"]["image_size"] == [8, 8]
    assert saved["rng_per_rank"] is None
    assert isinstance(saved["rng"]["torch"], torch.Tensor)
    assert saved["config"]["trainer"]["epochs"] == 2
    assert saved["kiln_version"]


def _fresh(run: Path, *extra: str) -> Run:
    return build_run(_cfg(run, *extra), Dist(), CPU, [])


def _callback(run: Run, kind: type) -> object:
    return next(cb for cb in run.callbacks.items if isinstance(cb, kind))


def test_load_state_dict_puts_everything_back(run: Path) -> None:
    from kiln.engine.callbacks import EarlyStopping

    fresh = _fresh(run)
    saved = ckpt.load(RunDir(run).last)
    fresh.load_state_dict(saved, str(RunDir(run).last))
    assert fresh.state.epoch == 2
    assert fresh.state.step == 20
    assert fresh.feed.state_dict() == saved["data_state"]
    es = _callback(fresh, EarlyStopping)
    assert es.best == saved["callbacks"]["EarlyStopping#0"]["best"]  # type: ignore[attr-defined]
    assert es.wait == saved["callbacks"]["EarlyStopping#0"]["wait"]  # type: ignore[attr-defined]
    assert fresh.checkpoints.best == saved["best_metric"]
    assert fresh.checkpoints.best_epoch == saved["best_epoch"]
    for (key, a), b in zip(fresh.model.state_dict().items(), saved["model_state_dict"].values(), strict=True):
        assert torch.equal(a, b), key
    assert fresh.scheduler.last_epoch == 20
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])


def test_state_dict_round_trips(run: Path) -> None:
    fresh = _fresh(run)
    saved = ckpt.load(RunDir(run).last)
    fresh.load_state_dict(saved, str(RunDir(run).last))
    again = fresh.state_dict(saved["metrics"])
    for key in ("epoch", "step", "data_state", "callbacks", "checkpoints", "recipe"):
        assert again[key] == saved[key], key


def test_a_checkpoint_of_another_format_is_refused_in_one_line(run: Path, tmp_path: Path) -> None:
    saved = ckpt.load(RunDir(run).last)
    del saved["format"]  # as every checkpoint before formats were numbered
    ckpt.save(saved, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="a checkpoint of format 1") as refused:
        ckpt.load(tmp_path / "old.pt")
    assert "\n" not in str(refused.value)


def test_its_weights_still_start_a_run(run: Path, tmp_path: Path) -> None:
    saved = ckpt.load(RunDir(run).last)
    del saved["format"]
    ckpt.save(saved, tmp_path / "old.pt")
    assert set(ckpt.read_weights(tmp_path / "old.pt")) == set(saved["model_state_dict"])


def test_another_model_is_refused_naming_the_difference(run: Path) -> None:
    cfg = _cfg(run, "model.name=mlp")
    saved = ckpt.load(RunDir(run).last)
    with pytest.raises(
        CheckpointError, match=r"the model differs from the checkpoint's \(model.name: 'lenet' -> 'mlp'\)"
    ):
        check_compatible(str(RunDir(run).last), cfg, saved, [str(i) for i in range(10)])


def test_other_classes_are_refused(run: Path) -> None:
    saved = ckpt.load(RunDir(run).last)
    with pytest.raises(CheckpointError, match="trained on classes"):
        check_compatible(str(RunDir(run).last), _cfg(run), saved, ["a", "b"])


def test_resume_auto_skips_a_damaged_newest_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = RunDir(tmp_path)
    r.checkpoints.mkdir()
    r.epoch_checkpoint(1).write_bytes(RunDir(run).last.read_bytes())
    r.last.write_bytes(b"torn")
    assert find_resume(r) == str(r.epoch_checkpoint(1))
    assert "skipping" in capsys.readouterr().out
