"""Built-in models. Every factory takes ``num_classes``, ``in_channels`` and ``image_size`` (H, W)
from the data, plus its own ``model.args``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kiln.registry import register_model


def _feature_size(features: nn.Module, in_channels: int, image_size: tuple[int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, *image_size)).numel())


class LeNet(nn.Module):
    """The CNN of PyTorch's CIFAR-10 tutorial (2 conv + 3 linear), adapting to channels and size.

    Images under 16 px (e.g. 8x8 digits) get padding 2 on the 5x5 convs so two poolings still fit.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, image_size: Sequence[int] = (32, 32)
    ) -> None:
        super().__init__()
        pad = 2 if min(image_size) < 16 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        flat = _feature_size(self.features, in_channels, tuple(image_size))  # 16*5*5 at 32x32
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lenet")
def lenet(num_classes: int = 10, in_channels: int = 3, image_size: Sequence[int] = (32, 32)) -> nn.Module:
    return LeNet(num_classes, in_channels, image_size)


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: Sequence[int] = (32, 32),
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.0,
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size[0] * image_size[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2): 3 stages, stride-1 3x3 stem for 32x32 inputs."""

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                stages.append(BasicBlock(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))


@register_model("resnet_small")
def resnet_small(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: Sequence[int] = (32, 32),
    widths: Sequence[int] = (16, 32, 64),
    blocks: int = 1,
) -> nn.Module:
    """ResNet-8 by default (blocks=1); blocks=3 gives ResNet-20."""
    return ResNetSmall(num_classes, in_channels, widths, blocks)
