"""Name -> factory registries, filled by decorators, with one error style for unknown names.

A leaf: it imports nothing of kiln's but the errors, and no model, loss or dataset code. kiln's own
entries register themselves where they are defined (``kiln.models.builtin``, ``kiln.losses``); the one
model factory, ``kiln.models.create_model``, parses the ``torchvision:`` / ``timm:`` / ``hub:`` prefixes.
Any registry also takes ``module:callable`` (a user's own object, imported by name) and entry points of
installed plug-in packages."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, TypeVar

from kiln.errors import ConfigError, brief, clip, did_you_mean

F = TypeVar("F", bound=Callable[..., Any])
LISTED = 30  # valid names an error lists (a module's public names can be thousands)


def unknown_name_error(kind: str, name: str, valid: list[str], key: str) -> ConfigError:
    hint, names = did_you_mean(name, valid), sorted(valid)
    more = f", ... {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ConfigError(
        f"{key}: unknown {kind} {brief(name)}{hint} (valid: {', '.join(names[:LISTED])}{more})"
    )


class Registry:
    """A map of names to factories; `register` is a decorator, `get` raises a helpful error."""

    def __init__(self, kind: str, key: str, group: str | None = None) -> None:
        self.kind, self.key = kind, key  # key: the config key that names an entry, for error messages
        self._items: dict[str, Callable[..., Any]] = {}
        self._group = group  # entry-point group of installed plug-in packages, e.g. "kiln.models"

    @property
    def items(self) -> dict[str, Callable[..., Any]]:
        if self._group:
            group, self._group = self._group, None
            for ep in entry_points(group=group):
                # an installed package's `[project.entry-points."kiln.models"] name = "pkg.mod:factory"`
                self._items.setdefault(ep.name, _LazyEntryPoint(ep, self.key))
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


class _LazyEntryPoint:
    """Imports a plug-in's module only when its entry is used, not when kiln lists the names."""

    def __init__(self, ep: EntryPoint, key: str) -> None:
        self.ep, self.key = ep, key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            fn = self.ep.load()
        except Exception as e:
            raise ConfigError(
                f"{self.key}: plug-in '{self.ep.name}' ({self.ep.value}) failed to import: {e}"
            ) from None
        return fn(*args, **kwargs)


def resolve_callable(spec: str, key: str) -> Callable[..., Any]:
    """Import ``module:attr`` (only the module the config names; nothing else is imported)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: {brief(spec)} is not of the form 'module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{key}: cannot import module {brief(module_name)} ({clip(str(e))}); is it on PYTHONPATH or in "
            "the project folder?"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_")]
            raise unknown_name_error("name", attr, public, f"{key} ({clip(module_name)})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {brief(spec)} is not callable")
    return obj


def add_project_path(config: str | Path | None) -> None:
    """A project's own modules (``imports:``, ``module:name``) live beside its config or in the folder kiln
    is run from: put both first on sys.path (a console script does not add the working folder itself)."""
    folders = [str(Path(config).resolve().parent)] if config else []
    for folder in [*folders, os.getcwd()]:
        if folder not in sys.path:
            sys.path.insert(0, folder)


def import_user_modules(modules: list[str]) -> None:
    """Import the modules listed under `imports:` so their @register_* decorators run."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"imports: cannot import {brief(name)} ({clip(str(e))}); run kiln from the project folder"
            ) from None


MODELS = Registry("model", "model.name", group="kiln.models")
register_model = MODELS.register
DATASETS = Registry("dataset", "data.dataset", group="kiln.datasets")
register_dataset = DATASETS.register
LOSSES = Registry("loss", "trainer.loss", group="kiln.losses")
register_loss = LOSSES.register
METRICS = Registry("metric", "trainer.metrics", group="kiln.metrics")
register_metric = METRICS.register
CALLBACKS = Registry("callback", "callbacks", group="kiln.callbacks")
register_callback = CALLBACKS.register
SOURCES = Registry("data source", "data.source", group="kiln.sources")
register_source = SOURCES.register
# model.name prefixes (`timm:`, `torchvision:`, `hub:`): a factory (name, num_classes, in_channels,
# pretrained, **args) -> (model, the classifier its pretrained weights came with)
MODEL_PREFIXES = Registry("model prefix", "model.name", group="kiln.model_prefixes")
register_model_prefix = MODEL_PREFIXES.register
# export formats (``kiln.export.formats``): a ``Format`` subclass per name, for ``kiln export --format``
FORMATS = Registry("export format", "--format")
register_format = FORMATS.register
