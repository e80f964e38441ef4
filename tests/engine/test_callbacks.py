"""User callbacks: stop training by returning a reason; their state is checkpointed and restored. User
losses and metrics by module name. The stop-and-resume test trains three multi-epoch runs and is marked
slow by itself; the others train one epoch on 300 images or none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import kiln
from kiln.config import load_config
from kiln.engine.trainer import fit
from tests.conftest import ROOT


class CountingStopper(kiln.Callback):
    """Counts epochs across resumes; stops at `at` epochs in total."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        self.seen += 1
        return f"counted {self.seen} epochs" if self.seen >= self.at else None

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]


def _cfg(run: Path, *extra: str):
    return load_config(
        ROOT / "configs/digits.yaml",
        [
            f"run.dir={run}",
            "trainer.progress=off",
            "logging.tensorboard=false",
            "callbacks=[{name: 'tests.engine.test_callbacks:CountingStopper', args: {at: 3}}]",
            *extra,
        ],
    )


@pytest.mark.slow  # three multi-epoch runs
def test_user_callback_stops_training_and_state_survives_resume(tmp_path: Path) -> None:
    summary = fit(_cfg(tmp_path / "a", "trainer.epochs=10"))
    assert summary["epochs_run"] == 3
    assert summary["stopped_early"] == "counted 3 epochs"
    # stop after 2 (a shorter run), then resume: the callback must remember its 2 epochs and stop at 3
    fit(_cfg(tmp_path / "b", "trainer.epochs=2"))
    state = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["callbacks"]
    assert {"seen": 2} in state.values()
    summary = fit(_cfg(tmp_path / "b", "trainer.epochs=10"), resume=str(tmp_path / "b/checkpoints/last.pt"))
    assert summary["epochs_run"] == 3
    assert summary["stopped_early"] == "counted 3 epochs"
    lines = [json.loads(s)["epoch"] for s in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3]


def test_user_loss_and_metric_by_module_name(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            f"run.dir={tmp_path}",
            "trainer.epochs=1",
            "trainer.progress=off",
            "data.train_limit=300",
            "logging.tensorboard=false",
            "trainer.loss=torch.nn:CrossEntropyLoss",
            "trainer.loss_args={label_smoothing: 0.1}",
            "trainer.metrics=[tests.engine.test_callbacks:user_accuracy]",
        ],
    )
    fit(cfg)
    m = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    # the user's metric is given the whole val split's logits and labels, as kiln's own accuracy is
    assert m["val_user_accuracy"] == pytest.approx(m["val_acc"], abs=1e-9)


def user_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def test_bad_callback_name_is_a_clear_error(tmp_path: Path) -> None:
    from kiln.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot import module 'nope'"):
        fit(
            load_config(ROOT / "configs/digits.yaml", [f"run.dir={tmp_path}", "callbacks=[{name: 'nope:X'}]"])
        )
