"""Every name the config uses is checked before any data is read (``engine/checks.py``), each mistake one
line with the closest valid name and the valid ones listed."""

from __future__ import annotations

import pytest
import torch

from kiln.config import load_config
from kiln.engine.checks import check_config
from kiln.errors import ConfigError
from tests.conftest import ROOT


def f1(logits: torch.Tensor, labels: torch.Tensor) -> float:  # a user's metric, by module:name
    return float((logits.argmax(1) == labels).double().mean())


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        check_config(load_config(ROOT / "configs/digits.yaml", list(overrides)))
    return str(e.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.source=cifar11", "data.source: unknown data source 'cifar11' — did you mean 'cifar10'?"),
        (
            "trainer.loss=cross_entropi",
            "trainer.loss: unknown loss 'cross_entropi' — did you mean 'cross_entropy'?",
        ),
        (
            "trainer.metrics=[macro_f2]",
            "trainer.metrics: unknown metric 'macro_f2' — did you mean 'macro_f1'?",
        ),
        ("callbacks=[{name: stop_at_acc}]", "callbacks: unknown callback 'stop_at_acc'"),
        (
            "trainer.early_stopping={monitor: val_los}",
            "trainer.early_stopping.monitor: 'val_los' is not a metric — did you mean 'val_loss'?",
        ),
        (
            "trainer.checkpoint.monitor=val_accc",
            "trainer.checkpoint.monitor: 'val_accc' is not a metric — did you mean 'val_acc'?",
        ),
    ],
)
def test_a_wrong_name_is_one_line_with_the_closest(override: str, expected: str) -> None:
    message = _error(override)
    assert message.startswith(expected)
    assert "\n" not in message


def test_the_valid_metric_names_are_listed() -> None:
    listed = _error("trainer.metrics=[nope]").split("(valid: ")[1]
    assert "balanced_accuracy" in listed


def test_a_monitor_error_lists_kilns_metrics_and_the_epoch_numbers() -> None:
    listed = _error("trainer.checkpoint.monitor=val_nope").split("(valid: ")[1]
    assert "val_balanced_accuracy" in listed
    assert "train_loss" in listed


def test_a_user_metric_is_a_valid_monitor() -> None:
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            "trainer.metrics=[tests.engine.test_checks:f1]",
            "trainer.early_stopping={monitor: val_f1, mode: max}",
        ],
    )
    assert set(check_config(cfg)) == {"f1"}


def test_a_monitored_builtin_metric_is_computed_without_being_listed() -> None:
    cfg = load_config(ROOT / "configs/digits.yaml", ["trainer.checkpoint.monitor=val_macro_f1"])
    assert set(check_config(cfg)) == {"macro_f1"}
