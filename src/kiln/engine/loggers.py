"""Experiment loggers as callbacks (TensorBoard, Weights & Biases), built from ``cfg.logging``. A logger that
is off is never created (nor is its package imported); under DDP only rank 0 logs."""

from __future__ import annotations

from kiln.config import Config
from kiln.console import log
from kiln.engine.callbacks import Callback
from kiln.paths import RunDir


def build_loggers(cfg: Config, run: RunDir) -> list[Callback]:
    loggers: list[Callback] = []
    lc = cfg.logging
    if lc.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            # on by default, and tensorboard is an optional extra: a note, not an error
            log(
                "kiln: logging.tensorboard is on but the tensorboard package is missing; "
                "pip install 'torchkiln[tensorboard]' (or set logging.tensorboard=false)"
            )
        else:
            from kiln.engine.tensorboard_logger import TensorBoardLogger

            loggers.append(TensorBoardLogger(run.tensorboard, lc.every_n_steps, lc.images, lc.graph))
    if lc.wandb is not None and lc.wandb.mode != "disabled":
        from kiln.engine.wandb_logger import WandbLogger, import_wandb

        import_wandb(lc.wandb.mode)  # fail here, before training, when it is not installed
        loggers.append(WandbLogger(cfg, run.root, lc.every_n_steps, lc.images))
    return loggers
