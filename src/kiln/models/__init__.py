"""`create(name, num_classes=, in_channels=, image_size=, **args)`: every model kiln can build."""

from __future__ import annotations

from typing import Any

from torch import nn

from kiln.errors import ConfigError
from kiln.models import builtin  # noqa: F401  (fills the registry)
from kiln.models.zoo import timm_model, torchvision_model
from kiln.registry import MODELS


def create(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: Any = (32, 32),
    pretrained: bool = False,
    **args: Any,
) -> nn.Module:
    """``pretrained=True`` asks torchvision/timm for their default weights (a download)."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix == "torchvision":
        return torchvision_model(rest, num_classes, in_channels, pretrained, **args)
    if sep and prefix == "timm":
        return timm_model(rest, num_classes, in_channels, pretrained, **args)
    if pretrained:
        raise ConfigError(f"model.pretrained: '{name}' has no downloadable default weights; give a weights "
                          "file instead (model.pretrained: /path/to/weights.pt)")  # fmt: skip
    factory = MODELS.get(name)  # a registered name, or "module:callable" for a user's own
    try:
        model = factory(
            num_classes=num_classes, in_channels=in_channels, image_size=tuple(image_size), **args
        )
    except TypeError as e:
        raise ConfigError(f"model.args: {name} does not accept these arguments ({e})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
