"""Checkpoint and weight files: written atomically (temp file, fsync, os.replace), read only with
``torch.load(weights_only=True)`` or safetensors, so no file can run code when kiln opens it.

A checkpoint is a dict of tensors and plain Python values. Its keys follow PyTorch's checkpoint tutorial
(`model_state_dict`, `optimizer_state_dict`, `epoch`, `loss`) so code written for it loads kiln's too.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.atomic import write_with
from kiln.errors import CheckpointError, clip

# The layout of a kiln checkpoint. A checkpoint of another format is refused with one line (no shims for
# what earlier commits wrote); its weights still load as model.pretrained.
FORMAT = 2


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
            f"could not write checkpoint {path} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); the "
            "previous file is unchanged. Free disk space or choose another run.dir"
        ) from None


def _existing_file(path: str | Path, key: str, what: str) -> Path:
    """``path`` as a file that exists, or one line naming ``key`` and what the path is instead."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{key}: {path} is a folder, not a {what}")
    if not path.is_file():
        raise CheckpointError(f"{key}: {what} not found: {path}")
    return path


def _first_line(e: BaseException) -> str:
    return clip(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def _not_pytorch(key: str, path: Path) -> CheckpointError:
    return CheckpointError(f"{key}: {path} is not a PyTorch file (damaged, truncated or another format?)")


def _load_safe(path: Path, key: str) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain values only; errors as one line naming the
    file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # "Unsupported global: GLOBAL m.f" or "unsupported GLOBAL m.f whose module m is blocked": an object
        refused = [ln.strip() for ln in str(e).splitlines() if "global" in ln.lower()]
        if not refused:  # not a pickle at all (random bytes, another format): "Unsupported operand 61"
            raise _not_pytorch(key, path) from None
        raise CheckpointError(
            f"{key}: {path}: refused, it holds objects other than tensors and plain values "
            f"({clip(refused[0])}); kiln never unpickles code from a file"
        ) from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile...: whatever a damaged file raises
        if path.stat().st_size == 0:
            raise CheckpointError(f"{key}: {path} is empty (0 bytes); was it copied completely?") from None
        # text or random bytes read as a legacy pickle fail with a bare number: "KeyError: 105"
        if not any(c.isalpha() for c in str(e)):
            raise _not_pytorch(key, path) from None
        raise CheckpointError(
            f"{key}: {path}: not a readable checkpoint (damaged or truncated?): {_first_line(e)}"
        ) from None


def load(path: str | Path, key: str = "checkpoint", any_format: bool = False) -> dict[str, Any]:
    """Load a kiln checkpoint without unpickling code: anything but tensors and plain values is refused, and
    so is a checkpoint of another ``FORMAT`` (unless ``any_format``: only its weights and records are read).
    ``key``: the option or config key that named the file (``--checkpoint``, ``--model``), for errors."""
    path = _existing_file(path, key, "checkpoint")
    obj = _load_safe(path, key)
    if not isinstance(obj, dict) or "model_state_dict" not in obj:
        raise CheckpointError(f"{key}: {path}: not a kiln checkpoint (no 'model_state_dict')")
    if not any_format and obj.get("format") != FORMAT:
        written = f"kiln {obj.get('kiln_version', 'of an earlier commit')}"
        raise CheckpointError(
            f"{key}: {path}: a checkpoint of format {obj.get('format', 1)} (written by {written}); this kiln "
            f"reads format {FORMAT}. Train anew, starting from its weights with model.pretrained={path}"
        )
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
    path = _existing_file(path, key, "weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        safetensors_header(path, key)  # the header checked here first: the library trusts its length
        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError (offsets outside the file, bad dtype), OSError
            raise CheckpointError(
                f"{key}: {path} is not a readable safetensors file ({_first_line(e)})"
            ) from None
    obj = _load_safe(path, key)
    for k in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(k), dict):
            obj = obj[k]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{key}: {path} holds no state_dict of tensors")
    # weights saved from DDP or torch.compile wrappers carry these prefixes
    return OrderedDict((k.removeprefix("module.").removeprefix("_orig_mod."), v) for k, v in obj.items())


MAX_HEADER = 16 * 2**20  # bytes of safetensors JSON header; ~100 bytes per tensor, so ~160,000 tensors


def safetensors_header(path: str | Path, key: str = "model.pretrained") -> dict[str, Any]:
    """The JSON header of a .safetensors file, checked before anything trusts it: the 8-byte little-endian
    length fits in the file and under ``MAX_HEADER``, the header is a JSON object, and its ``__metadata__``
    (when present) maps strings to strings. Every failure is one line naming the file and ``key``."""
    path = _existing_file(path, key, "weights file")

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{key}: {path} is not a readable safetensors file ({why})")

    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER:
                raise bad(f"its header claims {length:,} bytes, more than {MAX_HEADER // 2**20} MiB")
            if length > size - 8:
                raise bad(f"its header claims {length:,} bytes; the file has {size - 8:,} after the length")
            header = json.loads(f.read(length).decode("utf-8"))  # bytes: json.loads would guess UTF-16
    except OSError as e:
        raise CheckpointError(f"{key}: cannot read {path} ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise bad(f"its header is not JSON: {_first_line(e)}") from None
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("its __metadata__ is not a mapping of strings to strings")
    return header


def safetensors_metadata(path: str | Path, key: str = "model.pretrained") -> dict[str, str]:
    """The string metadata stored in a .safetensors header (empty for other files)."""
    if Path(path).suffix != ".safetensors":
        return {}
    return dict(safetensors_header(path, key).get("__metadata__") or {})
