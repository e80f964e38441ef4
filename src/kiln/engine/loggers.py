"""Experiment loggers as callbacks (TensorBoard, Weights & Biases): built from ``cfg.logging``.

A logger that is off is never created (nor is its package imported). Under DDP only rank 0 logs.
Logging never changes training: nothing here draws from the global RNGs (``keep_rng`` guards the one-off
work at the start), and the per-step scalars read the device loss back only every
``logging.every_n_steps`` optimizer steps.

This module holds what both loggers share; the loggers live in ``tensorboard_logger`` and
``wandb_logger``.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.config import Config
from kiln.engine.callbacks import Callback
from kiln.engine.progress import log
from kiln.errors import ConfigError

SAMPLE_IMAGES = 16  # augmented training images in the grid logged at the start


def is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def build_loggers(cfg: Config, run_dir: Path) -> list[Callback]:
    if not is_rank_zero():
        return []
    loggers: list[Callback] = []
    lc = cfg.logging
    if lc.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            # on by default, and tensorboard is an optional extra: a note, not an error
            log("kiln: logging.tensorboard is on but the tensorboard package is missing; "
                "pip install 'torchkiln[tensorboard]' (or set logging.tensorboard=false)")  # fmt: skip
        else:
            from kiln.engine.tensorboard_logger import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir / "tensorboard", lc.every_n_steps, lc.images))
    if lc.wandb is not None and lc.wandb.mode != "disabled":
        from kiln.engine.wandb_logger import WandbLogger, import_wandb

        import_wandb(lc.wandb.mode)  # fail here, before training, when it is not installed
        loggers.append(WandbLogger(cfg, run_dir, lc.every_n_steps, lc.images))
    return loggers


def missing_wandb() -> ConfigError:
    return ConfigError(
        "logging.wandb is set but the wandb package is not installed: pip install 'torchkiln[wandb]' "
        "(or remove logging.wandb)"
    )


@contextlib.contextmanager
def keep_rng() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and Python global RNG states on exit."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(
        devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    ):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def augmented_grid(info: dict[str, Any], n: int = SAMPLE_IMAGES) -> torch.Tensor | None:
    """A [3, H, W] float grid (0..1) of ``n`` training images (spread over the classes) after augmentation.

    The augmentation draws from its own seeded generator, never from the global RNGs."""
    from torchvision.utils import make_grid

    bundle, augment = info.get("bundle"), info.get("augment")
    if bundle is None or augment is None:
        return None
    train = bundle.train
    idx = train.spread(n)
    if len(idx) == 0:
        return None
    raw = train.images_at(idx)
    device = getattr(train, "device", raw.device)
    with torch.no_grad():
        x = augment(raw.to(device), idx.to(device)).float().cpu()
        if raw.dtype == torch.uint8:  # normalised by the transform: undo it for display
            c = x.shape[1]
            mean = torch.tensor(bundle.transform.mean, dtype=torch.float32).view(1, c, 1, 1)
            std = torch.tensor(bundle.transform.std, dtype=torch.float32).view(1, c, 1, 1)
            x = x * std + mean
        x = x.clamp(0, 1)
        scale = max(1, 32 // max(x.shape[2:]))  # small images (8x8 digits) are blown up to be seen
        if scale > 1:
            x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
        return make_grid(x, nrow=8, padding=2, pad_value=1.0)


def trace_model(info: dict[str, Any], add: Any) -> None:
    """``add(model, example)`` (e.g. SummaryWriter.add_graph) on two sample images, in eval mode, without
    touching the RNGs or BatchNorm statistics; a model that cannot be traced gets a one-line note."""
    import warnings

    model, sample = info.get("model"), info.get("sample_images")
    if model is None or sample is None or len(sample) == 0:
        return
    was_training = model.training
    model.eval()
    try:
        with (
            keep_rng(),
            torch.no_grad(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            add(model, sample[:2])
    except Exception as e:  # noqa: BLE001 - any tracing failure only costs the graph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log(f"kiln: model graph not logged (the model cannot be traced: {first[:160]})")
    finally:
        model.train(was_training)


_figures_cache: list[Any] = [None, None]  # (outputs, figures): TensorBoard and W&B share one computation


def evaluation_figures(outputs: Any) -> dict[str, Any]:
    """The test evaluation's report (kiln.evaluation.metrics.compute) and its confusion-matrix and PR-curve
    PNGs (kiln.evaluation.plots), computed once per ``Outputs`` object."""
    if _figures_cache[0] is outputs:
        return _figures_cache[1]
    from kiln.evaluation import metrics, plots

    report = metrics.compute(outputs)
    figs = {
        "report": report,
        "confusion_matrix": plots.confusion_matrix(report["confusion_matrix"], list(outputs.classes)),
        "pr_curves": plots.pr_curves(metrics.pr_curves(outputs), report["average_precision"]),
    }
    _figures_cache[:] = [outputs, figs]
    return figs


def release_figures() -> None:
    _figures_cache[:] = [None, None]  # drop the reference to the test logits


def png_array(png: bytes) -> np.ndarray:
    """PNG bytes -> [H, W, 3] uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))
