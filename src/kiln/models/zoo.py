"""Models from torchvision and timm by name (`torchvision:resnet18`, `timm:resnet18`), heads sized
to the class count. timm is an optional extra and imported only when asked for."""

from __future__ import annotations

from typing import Any

from torch import nn

from kiln.errors import ConfigError
from kiln.registry import unknown_name_error

NO_NETWORK = (
    "could not download pretrained weights for {what} ({err}). With no network, download them "
    "elsewhere and set model.pretrained: /path/to/weights.pth (or .safetensors)"
)


def torchvision_model(
    name: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        raise unknown_name_error("torchvision model", name, valid, "model.name")
    if in_channels != 3:
        raise ConfigError(
            f"model.name: torchvision:{name} takes 3-channel images but the data has {in_channels}; "
            "set data.channels=3"
        )
    if not pretrained:
        kwargs.setdefault("weights", None)
        return torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
    try:  # the real download path (torch hub cache): the library's default weights, then a new head
        model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        raise ConfigError(
            "model.pretrained: " + NO_NETWORK.format(what=f"torchvision:{name}", err=e)
        ) from None
    from kiln.models.transfer import replace_head

    replace_head(model, num_classes)
    return model


def timm_model(
    name: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model.name: timm:{name} needs timm: pip install 'torchkiln[timm]' (or pip install timm)"
        ) from None
    valid = timm.list_models()
    if name not in valid:
        raise unknown_name_error("timm model", name, valid, "model.name")
    try:  # timm resizes the head (and the stem for other channel counts) itself
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise ConfigError("model.pretrained: " + NO_NETWORK.format(what=f"timm:{name}", err=e)) from None
