"""Data-dependent first-layer init (model.pca_init) and the LeNet forward's pool-then-ReLU order. The test
that also trains a run with it is marked slow by itself; the others are unit tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from kiln.config import load_config
from kiln.engine.trainer import fit
from kiln.errors import ConfigError
from kiln.models.builtin import LeNet
from kiln.models.init import first_conv, images_for_pca, pca_init
from tests.conftest import ROOT, write_png_folder


def _digit_images() -> torch.Tensor:
    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16
    return (x - x.mean()) / x.std()


def test_pca_init_whitens_the_first_conv_outputs() -> None:
    x = _digit_images()
    conv = nn.Conv2d(1, 6, 3)
    pca_init(conv, x, eps=0.0)
    out = conv(x).detach().permute(1, 0, 2, 3).reshape(6, -1)
    second = out @ out.T / out.shape[1]  # uncentred second moments of the six filter responses
    assert torch.allclose(second, torch.eye(6), atol=1e-3)  # unit variance, decorrelated
    assert bool((conv.bias == 0).all())


def test_pca_init_with_more_filters_than_patch_dimensions() -> None:
    conv = nn.Conv2d(1, 12, 3)  # a 3x3 grey patch has 9 dimensions: filters 10..12 start at zero
    pca_init(conv, _digit_images())
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert bool((norms[:9] > 0).all())
    assert bool((norms[9:] == 0).all())


def test_first_conv_and_patch_budget() -> None:
    assert first_conv(LeNet()).out_channels == 6
    with pytest.raises(ConfigError, match=r"model\.pca_init: Sequential has no Conv2d"):
        first_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    assert images_for_pca((5, 5), (32, 32)) == 250_000 // 784  # ~250k 5x5 patches from 28x28 positions each


def test_lenet_forward_is_the_tutorial_function_with_the_same_gradients() -> None:
    """kiln's LeNet pools before its ReLU (cheaper); the tutorial applies ReLU first. Same function,
    same gradients, so the tutorial's Net and kiln's lenet train identically."""
    torch.manual_seed(0)
    net = LeNet()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))

    def tutorial(m: LeNet, x: torch.Tensor) -> torch.Tensor:
        x = m.pool(F.relu(m.conv1(x)))
        x = m.pool(F.relu(m.conv2(x)))
        return m.fc3(F.relu(m.fc2(F.relu(m.fc1(torch.flatten(x, 1))))))

    grads = []
    for forward in (net.forward, lambda x: tutorial(net, x)):
        net.zero_grad()
        out = forward(x)
        F.cross_entropy(out, y).backward()
        grads.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1], strict=True))


@pytest.mark.slow  # builds a run, then trains it for an epoch
def test_pca_init_in_a_real_run_sets_the_first_conv_from_training_images(tmp_path: Path) -> None:
    from kiln.data import build
    from kiln.engine.distributed import Dist
    from kiln.engine.init import sample_images
    from kiln.engine.setup import build_run

    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [f"run.dir={tmp_path}", "trainer.progress=off", "trainer.epochs=1", "model.pca_init=true"],
    )
    bundle = build(cfg.data, 0, torch.device("cpu"))
    torch.manual_seed(0)
    run = build_run(cfg, Dist(), torch.device("cpu"), [])
    expected = nn.Conv2d(1, 6, 5, padding=2)
    pca_init(expected, sample_images(bundle, images_for_pca((5, 5), bundle.spec.size)))
    assert torch.allclose(run.model.conv1.weight, expected.weight)
    assert run.init_seconds > 0
    fit(cfg)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["seconds"] > 0
    assert first["validated"]


def test_init_samples_spread_over_a_class_sorted_folder(tmp_path: Path) -> None:
    """An image folder lists class by class: the init's sample must not be the first class alone."""
    from kiln.config import DataConfig
    from kiln.data import build
    from kiln.engine.init import sample_images

    root = write_png_folder(tmp_path / "imgs", ["a", "b", "c"], per_class=10, size=8)
    bundle = build(
        DataConfig(source="folder", root=str(root), val_split=0, batch_size=8, cache_dir=str(tmp_path / "c")),
        0,
        torch.device("cpu"),
    )
    x = sample_images(bundle, 3)
    mean_per_image = x.mean((1, 2, 3))  # the classes differ in brightness (write_png_folder)
    assert len(x) == 3
    assert bool((mean_per_image.diff() > 0.5).all())  # one image of each class, not three of the first


def test_pca_init_with_pretrained_weights_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.pca_init"):
        load_config(ROOT / "configs/digits.yaml", ["model.pca_init=true", "model.pretrained=weights.pt"])
