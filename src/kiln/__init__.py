"""kiln: train, evaluate, export and tune PyTorch image classifiers from one config file.

The package root is kiln's public face: ``import kiln`` stays cheap (no torch) so that ``@kiln.register_*``
in a user's module and ``kiln --help`` cost nothing; ``kiln.Callback``, ``kiln.FitInfo`` and
``kiln.create_model`` load their modules on first use. Nothing inside kiln imports this root.
"""

from typing import Any

from kiln._version import __version__
from kiln.errors import KilnError
from kiln.registry import (
    MODELS,
    register_callback,
    register_dataset,
    register_loss,
    register_metric,
    register_model,
)

__all__ = [
    "MODELS",
    "Callback",
    "FitInfo",
    "KilnError",
    "__version__",
    "create_model",
    "register_callback",
    "register_dataset",
    "register_loss",
    "register_metric",
    "register_model",
]


def __getattr__(name: str) -> Any:
    if name in ("Callback", "FitInfo"):
        from kiln.engine import callbacks

        return getattr(callbacks, name)
    if name == "create_model":
        from kiln.models import create_model

        return create_model
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")
