"""Checkpoint and weight files: written atomically (temp file, fsync, os.replace), read only with
``torch.load(weights_only=True)`` or safetensors, so no file can run code when kiln opens it.

A checkpoint is a dict of tensors and plain Python values. Its keys follow PyTorch's checkpoint tutorial
(`model_state_dict`, `optimizer_state_dict`, `epoch`, `loss`) so code written for it loads kiln's too.
"""

from __future__ import annotations

import pickle
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.atomic import write_with
from kiln.errors import CheckpointError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers, so state_dict keys carry no prefixes."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),  # the Mersenne Twister words (ints), weights_only-safe
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(int(v) for v in state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(obj: dict[str, Any], path: Path) -> None:
    """Write ``obj`` so that ``path`` holds either the old file or the complete new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_with(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        raise CheckpointError(
            f"could not write checkpoint {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); the "
            "previous file is unchanged. Free disk space or choose another run.dir"
        ) from None


def _load_safe(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain values only, errors as one line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [
            ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln or "Unsupported" in ln
        ]
        first = lines[0] if lines else type(e).__name__
        raise CheckpointError(
            f"{path}: refused, it holds objects other than tensors and plain values "
            f"({first}); kiln never unpickles code from a file"
        ) from None
    except (
        Exception
    ) as e:  # RuntimeError, EOFError, BadZipFile, IndexError...: whatever a damaged file raises
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged or truncated?): {e}") from None


def load(path: str | Path) -> dict[str, Any]:
    """Load a kiln checkpoint without unpickling code: anything but tensors and plain values is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _load_safe(path)
    if not isinstance(obj, dict) or "model_state_dict" not in obj:
        raise CheckpointError(f"{path}: not a kiln checkpoint (no 'model_state_dict')")
    return obj


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state)`` with an error that says which keys or shapes disagree."""
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__name__}: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__name__}: {detail[0] if detail else e}"
        ) from None


def read_weights(path: str | Path, key: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, a plain .pt/.pth state_dict, or a kiln/tutorial checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}: weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError
            raise CheckpointError(f"{key}: {path} is not a readable safetensors file ({e})") from None
    obj = _load_safe(path)
    for k in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(k), dict):
            obj = obj[k]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{key}: {path} holds no state_dict of tensors")
    # weights saved from DDP or torch.compile wrappers carry these prefixes
    return OrderedDict((k.removeprefix("module.").removeprefix("_orig_mod."), v) for k, v in obj.items())


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a .safetensors header (empty for other files)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
