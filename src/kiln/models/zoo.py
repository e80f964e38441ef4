"""Models from torchvision, timm and torch.hub by name (`torchvision:resnet18`, `timm:resnet18`,
`hub:owner/repo:entrypoint`), heads sized to the class count. timm is an optional extra and imported only
when asked for."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from torch import nn

from kiln.errors import ConfigError
from kiln.models.transfer import Head, head_name, replace_head
from kiln.registry import register_model_prefix, unknown_name_error

NO_NETWORK = (
    "could not download pretrained weights for {what} ({err}). With no network, download them "
    "elsewhere and set model.pretrained: /path/to/weights.pth (or .safetensors)"
)


Built = tuple[nn.Module, Head | None]  # the model, and the classifier its pretrained weights came with


@register_model_prefix("torchvision")
def torchvision_model(
    name: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs: Any
) -> Built:
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
        return torchvision.models.get_model(name, num_classes=num_classes, **kwargs), None
    try:  # the real download path (torch hub cache): the library's default weights, then a new head
        model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        raise ConfigError(
            "model.pretrained: " + NO_NETWORK.format(what=f"torchvision:{name}", err=e)
        ) from None
    head = pretrained_head(model)
    replace_head(model, num_classes)
    return model, head


@register_model_prefix("timm")
def timm_model(
    name: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs: Any
) -> Built:
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
        if not pretrained:
            return timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kwargs), None
        with hub_offline_unless_reachable():
            model = timm.create_model(name, pretrained=True, in_chans=in_channels, **kwargs)
        head = pretrained_head(model)
        model.reset_classifier(num_classes)
        return model, head
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError("model.pretrained: " + NO_NETWORK.format(what=f"timm:{name}", err=first)) from None


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (no DNS: False at once)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline_unless_reachable() -> Iterator[None]:
    """The Hugging Face Hub (timm's weights) in offline mode when it cannot be reached: weights in the local
    cache still load, and missing ones fail in a tenth of a second instead of after ten retries (71 s)."""
    import huggingface_hub.constants as hub

    if reachable("huggingface.co"):
        yield
        return
    old, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old


@register_model_prefix("hub")
def hub_model(
    spec: str, num_classes: int, in_channels: int, pretrained: bool = False, **kwargs: Any
) -> Built:
    """``owner/repo[:ref]:entrypoint`` from GitHub through torch.hub (the real download path), or
    ``/path/to/repo:entrypoint`` from a local folder holding a hubconf.py (``source='local'``). The repo's
    code runs: it is trusted because the config names it, as with ``module:callable``."""
    import torch

    repo, sep, entry = spec.rpartition(":")
    if not sep or not repo or not entry:
        raise ConfigError(
            f"model.name: 'hub:{spec}' is not of the form hub:owner/repo:entrypoint "
            "(or hub:/path/to/local/repo:entrypoint)"
        )
    local = repo.startswith(("/", ".", "~"))
    if local:
        from pathlib import Path

        repo = str(Path(repo).expanduser())
        if not (Path(repo) / "hubconf.py").is_file():
            raise ConfigError(f"model.name: hub:{spec}: {repo} has no hubconf.py")
    if pretrained:
        kwargs.setdefault("pretrained", True)
    try:
        model = torch.hub.load(repo, entry, source="local" if local else "github", trust_repo=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # no network, no such repo/ref
        raise ConfigError(
            f"model.name: hub:{spec} could not be loaded ({str(e).splitlines()[0] if str(e) else e}); "
            "with no network, clone the repo and use hub:/path/to/repo:entrypoint"
        ) from None
    except (AttributeError, TypeError) as e:  # no such entrypoint, or arguments it does not take
        raise ConfigError(f"model.name: hub:{spec}: {e} (model.args are passed to the entrypoint)") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: hub:{spec} returned {type(model).__name__}, not a torch.nn.Module")
    head = pretrained_head(model) if pretrained else None
    replace_head(model, num_classes)
    return model, head


def pretrained_head(model: nn.Module) -> Head | None:
    """The library's classifier (weight, bias), for model.head_init: pretrained_classes."""
    layer = model.get_submodule(head_name(model))
    if isinstance(layer, nn.Linear) and layer.bias is not None:
        return layer.weight.detach().clone(), layer.bias.detach().clone()
    return None
