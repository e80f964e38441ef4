"""Everything the config names, checked before any data is read: the data source, the loss, the metrics
and the monitors, the callbacks. A typo on a 10,000-photo folder is reported in the time it takes to
start, with the valid names (the project's own registrations included), not after the decoding."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kiln.config import EPOCH_METRICS, Config
from kiln.data import sources  # noqa: F401  (defining kiln's data sources registers them)
from kiln.errors import ConfigError, brief, did_you_mean
from kiln.metrics import builtin  # noqa: F401  (and kiln's own metrics)
from kiln.registry import CALLBACKS, DATASETS, LOSSES, METRICS, SOURCES

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


def metric_name(spec: str) -> str:
    """The name a metric is logged under: ``val_<name>`` (``module:fn`` -> fn)."""
    return spec.rpartition(":")[2]


def check_config(cfg: Config) -> dict[str, MetricFn]:
    """Raise a one-line ConfigError for the first name the config gets wrong; return the validation
    metrics to compute (``trainer.metrics``, and kiln's own metrics that a monitor names)."""
    SOURCES.get(cfg.data.source)
    if cfg.data.source == "custom":
        DATASETS.get(cfg.data.dataset or "")
    if cfg.trainer.loss != "auto":  # auto: cross_entropy, or bce for multi-label data
        LOSSES.get(cfg.trainer.loss)

    for spec in cfg.callbacks:
        CALLBACKS.get(spec.name)
    metrics = {metric_name(spec): METRICS.get(spec) for spec in cfg.trainer.metrics}
    builtin_names = METRICS.names()
    valid = [
        *EPOCH_METRICS,
        *(f"val_{m}" for m in metrics),
        *(f"val_{m}" for m in builtin_names if m not in metrics),
    ]
    monitors = []
    if cfg.trainer.checkpoint.monitor != "auto":  # auto: decided from the data (engine/recipe.py)
        monitors.append(("trainer.checkpoint.monitor", cfg.trainer.checkpoint.monitor))
    if cfg.trainer.early_stopping:
        monitors.append(("trainer.early_stopping.monitor", cfg.trainer.early_stopping.monitor))
    for key, name in monitors:
        if name not in valid:
            raise ConfigError(
                f"{key}: {brief(name)} is not a metric{did_you_mean(name, valid)} (valid: {', '.join(valid)})"
            )
        wanted = name.removeprefix("val_")
        if name.startswith("val_") and wanted not in metrics and wanted in builtin_names:
            metrics[wanted] = METRICS.get(wanted)  # monitored: computed without being listed
    return metrics


def check_with_data(cfg: Config, multi_label: bool) -> None:
    """What the config asks of the data, checked against its sample lists (before anything is decoded)."""
    if multi_label and cfg.data.sampler == "balanced":
        raise ConfigError(
            "data.sampler=balanced draws each class equally often, and these images carry several labels "
            "each; for skewed multi-label data use trainer.class_weights=balanced (BCE's pos_weight)"
        )
