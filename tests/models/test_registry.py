import pytest
import torch

import kiln
from kiln.errors import ConfigError
from kiln.models import create_model, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("channels", "size"), [(1, (8, 8)), (1, (28, 28)), (3, (32, 32))])
def test_every_registered_model_builds_and_runs(name: str, channels: int, size: tuple[int, int]) -> None:
    if name == "airbench" and min(size) < 16:
        with pytest.raises(ConfigError, match="data.image_size"):
            create_model(name, num_classes=7, in_channels=channels, image_size=size)
        return
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size)
    out = model(torch.randn(2, channels, *size))
    assert out.shape == (2, 7)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'lenett' — did you mean 'lenet'\? \(valid: .*mlp"):
        create_model("lenett", num_classes=10)


def test_torchvision_prefix_resizes_head() -> None:
    m = create_model("torchvision:resnet18", num_classes=4, in_channels=3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        create_model("torchvision:resnet81", num_classes=4)
    with pytest.raises(ConfigError, match="data.channels=3"):
        create_model("torchvision:resnet18", num_classes=4, in_channels=1)


def test_timm_prefix() -> None:
    pytest.importorskip("timm", reason="timm is an optional extra")
    m = create_model("timm:resnet10t", num_classes=3, in_channels=1)
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@kiln.register_model("tiny_user_net")
def tiny_user_net(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 4
) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size[0] * image_size[1], num_classes)
    )


def test_user_registration_and_module_callable() -> None:
    assert "tiny_user_net" in list_models()
    m = create_model(
        "tests.models.test_registry:tiny_user_net", num_classes=2, in_channels=1, image_size=(4, 4)
    )
    assert m(torch.randn(1, 1, 4, 4)).shape == (1, 2)
    with pytest.raises(ConfigError, match="model.args"):
        create_model("mlp", num_classes=2, bogus=1)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        create_model("no_such_module:net", num_classes=2)


def test_airbench_whitening_init_whitens() -> None:
    m = create_model("airbench", num_classes=10, in_channels=3, image_size=(32, 32))
    x = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1)
    m.init_from_data(x)
    out = m.whiten(x)[:, :12].permute(1, 0, 2, 3).reshape(12, -1)  # the + half of the whitening channels
    cov = out @ out.T / out.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.1)
