"""Losses by name: registered factories, `module:Class`, `module:function`, with their arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kiln.errors import ConfigError
from kiln.losses import build_loss

LOGITS = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % 5


def test_cross_entropy_with_label_smoothing() -> None:
    got = build_loss("cross_entropy", 0.1, {})(LOGITS, Y)
    assert torch.equal(got, F.cross_entropy(LOGITS, Y, label_smoothing=0.1))


def test_focal_with_gamma_zero_is_cross_entropy_and_down_weights_easy_examples() -> None:
    assert torch.allclose(build_loss("focal", 0.0, {"gamma": 0.0})(LOGITS, Y), F.cross_entropy(LOGITS, Y))
    assert build_loss("focal", 0.0, {"gamma": 2.0})(LOGITS, Y) < F.cross_entropy(LOGITS, Y)


def test_module_class_and_function() -> None:
    cls = build_loss("torch.nn:CrossEntropyLoss", 0.0, {"label_smoothing": 0.2})
    assert torch.equal(cls(LOGITS, Y), F.cross_entropy(LOGITS, Y, label_smoothing=0.2))
    fn = build_loss("torch.nn.functional:cross_entropy", 0.0, {"reduction": "sum"})
    assert torch.allclose(fn(LOGITS, Y), F.cross_entropy(LOGITS, Y, reduction="sum"))


def test_bad_arguments_and_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="trainer.loss_args: focal does not accept these arguments"):
        build_loss("focal", 0.0, {"alpha": 1})
    with pytest.raises(ConfigError, match=r"trainer.loss: unknown loss 'focall' — did you mean 'focal'\?"):
        build_loss("focall", 0.0, {})
