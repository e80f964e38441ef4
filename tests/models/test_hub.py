"""torch.hub models (`hub:owner/repo:entrypoint`), tested offline with a local hub folder
(`source='local'`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln.errors import ConfigError
from kiln.models import create_model

HUBCONF = '''
dependencies = ["torch"]
import torch
from torch import nn


def tiny(pretrained=False, width=4):
    """A hub entrypoint as repositories write them: its own arguments, a 1000-class head."""
    net = nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1000))
    if pretrained:
        with torch.no_grad():
            net[0].weight.fill_(0.5)
    return net
'''


@pytest.fixture
def hub_repo(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "hubconf.py").write_text(HUBCONF)
    return tmp_path / "repo"


def test_local_hub_entrypoint_with_args_pretrained_and_a_new_head(hub_repo: Path) -> None:
    m = create_model(f"hub:{hub_repo}:tiny", num_classes=3, in_channels=3, pretrained=True, width=6)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 3)  # the new head
    assert m[0].out_channels == 6  # width=6 reached the entrypoint
    assert bool((m[0].weight == 0.5).all())  # pretrained=True reached the entrypoint


def test_hub_errors_are_one_line(hub_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not of the form hub:owner/repo:entrypoint"):
        create_model("hub:justaname", num_classes=2)
    with pytest.raises(ConfigError, match="has no hubconf.py"):
        create_model(f"hub:{tmp_path}:tiny", num_classes=2)
    with pytest.raises(ConfigError, match="model.args are passed to the entrypoint"):
        create_model(f"hub:{hub_repo}:tiny", num_classes=2, depth=3)
    with pytest.raises(ConfigError, match="model.name: hub:"):
        create_model(f"hub:{hub_repo}:nope", num_classes=2)
