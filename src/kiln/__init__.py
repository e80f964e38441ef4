"""kiln: train, evaluate, export and tune PyTorch image classifiers from one config file."""

from kiln.engine.callbacks import Callback
from kiln.errors import KilnError
from kiln.registry import (
    MODELS,
    create_model,
    register_callback,
    register_dataset,
    register_loss,
    register_metric,
    register_model,
)

__version__ = "0.1.0"
__all__ = [
    "MODELS", "Callback", "KilnError", "__version__", "create_model", "register_callback", "register_dataset",
    "register_loss", "register_metric", "register_model",
]  # fmt: skip
