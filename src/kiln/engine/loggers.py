"""Experiment loggers as callbacks (TensorBoard, Weights & Biases): built from ``cfg.logging``."""

from __future__ import annotations

from pathlib import Path

from kiln.config import Config
from kiln.engine.callbacks import Callback


def build_loggers(cfg: Config, run_dir: Path) -> list[Callback]:
    return []
