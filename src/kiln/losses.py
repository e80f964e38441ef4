"""Built-in losses (registry ``LOSSES``); a user's own is ``trainer.loss: mymodule:my_loss`` or a name
registered with ``@kiln.register_loss("name")``. A loss is called as ``loss(logits, targets)`` -> scalar."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kiln.errors import ConfigError
from kiln.registry import LOSSES, register_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@register_loss("cross_entropy")
def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


@register_loss("focal")
def focal(gamma: float = 2.0, label_smoothing: float = 0.0) -> LossFn:
    """Focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_true)^gamma."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
        return ((1 - torch.exp(-ce)) ** gamma * ce).mean()

    return loss


def build_loss(name: str, label_smoothing: float, args: dict[str, object]) -> LossFn:
    """A registered name is a factory (called with ``args``, and ``label_smoothing`` when it takes it);
    ``module:Class`` (e.g. ``torch.nn:CrossEntropyLoss``) is instantiated with ``args``; ``module:function``
    is the loss itself, ``function(logits, targets, **args)``."""
    factory = LOSSES.get(name)
    try:
        if ":" in name and not isinstance(factory, type):
            return functools.partial(factory, **args) if args else factory
        kwargs = dict(args)
        if "label_smoothing" in inspect.signature(factory).parameters:
            kwargs.setdefault("label_smoothing", label_smoothing)
        return factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"trainer.loss_args: {name} does not accept these arguments ({e})") from None
