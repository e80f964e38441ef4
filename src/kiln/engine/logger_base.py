"""What the experiment loggers (TensorBoard, W&B) share: the augmented-image grid, the model graph trace,
flattened hyperparameters, and the guard that keeps logging from touching the global RNGs.

Logging never changes training: nothing here draws from the global RNGs (``keep_rng`` guards the one-off
work at the start), and the per-step scalars read the device loss back only every
``logging.every_n_steps`` optimizer steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from kiln.console import log
from kiln.engine.callbacks import FitInfo


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


def augmented_grid(info: FitInfo) -> torch.Tensor | None:
    """A [3, H, W] float grid (0..1) of training images (spread over the classes) after augmentation."""
    from torchvision.utils import make_grid

    with torch.no_grad():
        x = info.augmented_samples().float().cpu().clamp(0, 1)
    if len(x) == 0:
        return None
    scale = max(1, 32 // max(x.shape[2:]))  # small images (8x8 digits) are blown up to be seen
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    return make_grid(x, nrow=8, padding=2, pad_value=1.0)


def trace_model(model: torch.nn.Module, sample: torch.Tensor, add: Callable[..., Any]) -> None:
    """``add(model, example)`` (e.g. SummaryWriter.add_graph) on two sample images, in eval mode, without
    touching the RNGs or BatchNorm statistics; a model that cannot be traced gets a one-line note."""
    if len(sample) == 0:
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


def png_array(png: bytes) -> np.ndarray:
    """PNG bytes -> [H, W, 3] uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))
