"""Name -> factory registries, filled by decorators, with the `torchvision:`, `timm:` and
`module:callable` prefixes resolved in one place and one error style for unknown names."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from kiln.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def unknown_name_error(kind: str, name: str, valid: list[str], key: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" — did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{key}: unknown {kind} '{name}'{hint} (valid: {', '.join(sorted(valid))})")


class Registry:
    """A map of names to factories; `register` is a decorator, `get` raises a helpful error."""

    def __init__(self, kind: str, key: str, builtins: str | None = None) -> None:
        self.kind, self.key = kind, key  # key: the config key that names an entry, for error messages
        self._items: dict[str, Callable[..., Any]] = {}
        self._builtins = builtins  # module whose import registers kiln's own entries (done on first use)

    @property
    def items(self) -> dict[str, Callable[..., Any]]:
        if self._builtins:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)
        return self._items

    def register(self, name: str | None = None) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            self._items[name or fn.__name__] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self.items)

    def __contains__(self, name: str) -> bool:
        return name in self.items

    def get(self, name: str) -> Callable[..., Any]:
        if ":" in name:
            return resolve_callable(name, self.key)
        if name not in self.items:
            raise unknown_name_error(self.kind, name, self.names(), self.key)
        return self.items[name]


def resolve_callable(spec: str, key: str) -> Callable[..., Any]:
    """Import ``module:attr`` (only the module the config names; nothing else is imported)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: '{spec}' is not of the form 'module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{key}: cannot import module '{module_name}' ({e}); is it on PYTHONPATH or in the project folder?"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_")]
            raise unknown_name_error("name", attr, public, f"{key} ({module_name})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: '{spec}' is not callable")
    return obj


def import_user_modules(modules: list[str]) -> None:
    """Import the modules listed under `imports:` so their @register_* decorators run."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"imports: cannot import '{name}' ({e}); run kiln from the project folder"
            ) from None


MODELS = Registry("model", "model.name", builtins="kiln.models.builtin")
register_model = MODELS.register


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a model by registry name or prefix (`torchvision:resnet18`, `timm:...`, `pkg.mod:fn`)."""
    # Imported here: the zoo modules import torchvision/timm, which we only pay for when used.
    from kiln.models import create

    return create(name, **kwargs)
