"""Device choice and mixed precision: which autocast dtype, and a GradScaler only where fp16 needs one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from kiln.errors import ConfigError, KilnError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "run.device: 'cuda' was asked for but no CUDA device is visible; use run.device=auto"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("run.device: 'mps' was asked for but MPS is not available; use run.device=auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA that supports it (no scaler needed), fp16 on older CUDA, fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("trainer.precision: fp16 autocast is for GPUs; use bf16 or fp32 on the CPU")
    return name


def autocast_factory(precision: str, device: torch.device) -> Callable[[], AbstractContextManager[object]]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    # Only fp16 underflows without loss scaling; a disabled scaler is a no-op with an empty state_dict.
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def out_of_memory(batch_size: int) -> KilnError:
    """The one line for a CUDA out-of-memory error, naming what to change."""
    return KilnError(
        f"out of GPU memory at data.batch_size={batch_size}; lower data.batch_size (and raise "
        "trainer.accumulate to keep the effective batch)"
    )
