"""Models from torchvision and timm by name (`torchvision:resnet18`, `timm:resnet18`), heads sized
to the class count. timm is an optional extra and imported only when asked for."""

from __future__ import annotations

from typing import Any

from torch import nn

from kiln.errors import ConfigError
from kiln.registry import unknown_name_error


def torchvision_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        raise unknown_name_error("torchvision model", name, valid, "model.name")
    if in_channels != 3:
        raise ConfigError(
            f"model.name: torchvision:{name} takes 3-channel images but the data has {in_channels}; "
            "set data.channels=3"
        )
    kwargs.setdefault("weights", None)
    return torchvision.models.get_model(name, num_classes=num_classes, **kwargs)


def timm_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model.name: timm:{name} needs timm: pip install 'torchkiln[timm]' (or pip install timm)"
        ) from None
    valid = timm.list_models()
    if name not in valid:
        raise unknown_name_error("timm model", name, valid, "model.name")
    kwargs.setdefault("pretrained", False)
    return timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kwargs)
