"""The one model factory: ``create_model(name, num_classes=, in_channels=, image_size=, pretrained=, **args)``
for every way kiln builds a network, with the one prefix parser:

    lenet, mlp, ...          kiln's own (``builtin.py``) or a name registered with @kiln.register_model
    torchvision:<name>       torchvision.models, head sized to the classes
    timm:<name>              timm (optional extra)
    hub:<owner/repo>:<fn>    torch.hub.load (a GitHub repo, or a local folder: hub:/path/to/repo:fn)
    pkg.module:callable      your own factory, imported by name
    an installed plug-in     entry point group ``kiln.models``
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kiln.errors import ConfigError
from kiln.models import (
    builtin,  # noqa: F401  (defining kiln's own models registers them)
    zoo,  # noqa: F401  (defining the torchvision:, timm:, hub: prefixes registers them)
)
from kiln.models.zoo import Built
from kiln.recipe import ModelRecipe
from kiln.registry import MODEL_PREFIXES, MODELS, import_user_modules


def parse_name(name: str) -> tuple[str | None, str]:
    """``"torchvision:resnet18"`` -> ("torchvision", "resnet18"); any other name -> (None, name)."""
    prefix, sep, rest = name.partition(":")
    return (prefix, rest) if sep and prefix in MODEL_PREFIXES else (None, name)


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: Any = (32, 32),
    pretrained: bool = False,
    **args: Any,
) -> nn.Module:
    """``pretrained=True`` asks the library for its default weights (a download)."""
    return build(name, num_classes, in_channels, image_size, pretrained, **args)[0]


def build(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: Any = (32, 32),
    pretrained: bool = False,
    **args: Any,
) -> Built:
    """``create_model``, and the classifier the library's pretrained weights came with (None without)."""
    prefix, rest = parse_name(name)
    if prefix is not None:
        return MODEL_PREFIXES.get(prefix)(rest, num_classes, in_channels, pretrained, **args)
    if pretrained:
        raise ConfigError(
            f"model.pretrained: '{name}' has no downloadable default weights; give a weights "
            "file instead (model.pretrained: /path/to/weights.pt)"
        )
    factory = MODELS.get(name)  # a registered name, or "module:callable" for a user's own
    try:
        model = factory(
            num_classes=num_classes, in_channels=in_channels, image_size=tuple(image_size), **args
        )
    except TypeError as e:
        raise ConfigError(f"model.args: {name} does not accept these arguments ({e})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model, None


def list_models() -> list[str]:
    """Names usable as ``model.name`` without a prefix (kiln's, registered and installed plug-ins)."""
    return MODELS.names()


def rebuild(recipe: ModelRecipe) -> nn.Module:
    """A trained model's network, without its weights, from its recipe (a checkpoint's, or a safetensors
    export's model.json): the model's name and args, its classes, its input's shape and the user modules
    that register it."""
    import_user_modules(list(recipe.imports))
    channels, height, width = recipe.preprocess.input_shape
    return create_model(
        recipe.model,
        num_classes=len(recipe.classes),
        in_channels=channels,
        image_size=(height, width),
        **recipe.args,
    )
