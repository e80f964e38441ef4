"""The preprocessing pretrained weights were trained with, so a fine-tuned model sees inputs like theirs:
input size, interpolation, crop_pct, mean and std, from timm's ``pretrained_cfg``, torchvision's weights
transforms, a kiln checkpoint's record, or a safetensors file's metadata. (Plain values: the data layer
turns them into its ``Preset``.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import kiln.checkpoint as ckpt
from kiln.config import ModelConfig
from kiln.errors import CheckpointError, clip
from kiln.models import parse_name
from kiln.spec import Preprocess


def _floats(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in (v.split(",") if isinstance(v, str) else v))


def _from_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """timm-style keys (input_size 'C,H,W' or [C, H, W], crop_pct, interpolation, mean, std)."""
    out: dict[str, Any] = {}
    if "input_size" in meta:
        size = _floats(meta["input_size"])
        out["image_size"] = (int(size[-2]), int(size[-1]))
    if "crop_pct" in meta:
        out["crop_pct"] = float(meta["crop_pct"])
    if meta.get("interpolation") in ("bilinear", "bicubic"):
        out["interpolation"] = meta["interpolation"]
    for k in ("mean", "std"):
        if k in meta:
            out[k] = _floats(meta[k])
    return out


def _from_file(path: Path) -> dict[str, Any]:
    """The file's own record; a record that is there but unreadable is one line naming the file."""
    if path.suffix == ".safetensors":
        meta = ckpt.safetensors_metadata(path, "model.pretrained")  # the header checked before any use
        return _parsed(path, "metadata", _from_metadata, meta)
    try:
        saved = ckpt.load(path, "model.pretrained", any_format=True)
        pre = (saved.get("recipe") or {}).get("preprocess") or {}
    except CheckpointError:
        return {}  # a plain state_dict: no record of its own (read_weights reports a bad file)
    return _from_record(pre, path) if pre else {}


def _parsed(path: Path, what: str, parse: Callable[[Any], dict[str, Any]], record: Any) -> dict[str, Any]:
    try:
        return parse(record)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"model.pretrained: {path}: its {what} is not readable ({type(e).__name__}: {clip(str(e))}); "
            "was it written by kiln or timm?"
        ) from None


def _from_record(record: Any, path: Path) -> dict[str, Any]:
    """A kiln checkpoint's typed ``Preprocess`` record: image_size, mean, std; crop settings when cropping."""
    pre = Preprocess.from_json(record, f"model.pretrained: {path}: its preprocessing record")
    out: dict[str, Any] = {"image_size": pre.spec.size, "mean": pre.mean, "std": pre.std}
    if pre.spec.resize == "crop":
        out.update(crop_pct=pre.spec.crop_pct, interpolation=pre.spec.interpolation)
    return out


def _from_library(name: str) -> tuple[dict[str, Any], str]:
    prefix, arch = parse_name(name)
    if prefix == "timm":
        import timm

        cfg = timm.get_pretrained_cfg(arch)
        return (_from_metadata(cfg.to_dict()) if cfg else {}), f"timm's pretrained_cfg for {arch}"
    if prefix == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(arch).DEFAULT
        t = weights.transforms()
        resize, crop = t.resize_size[0], t.crop_size[0]
        interp = "bicubic" if "BICUBIC" in str(t.interpolation) else "bilinear"
        return (
            {
                "image_size": (crop, crop),
                "crop_pct": crop / resize,
                "interpolation": interp,
                "mean": tuple(t.mean),
                "std": tuple(t.std),
            },
            f"torchvision's {weights}",
        )
    return {}, ""


def weights_preprocessing(model: ModelConfig) -> dict[str, Any] | None:
    """{"source", "image_size", "crop_pct", "interpolation", "mean", "std"} (each present when known), or
    None when training from scratch. A weights file's own record wins; a file without one (a plain
    state_dict) takes its architecture's library defaults."""
    if not model.pretrained:
        return None
    out, source = {}, ""
    if isinstance(model.pretrained, str):
        path = Path(model.pretrained).expanduser()
        out = _from_file(path)
        source = (
            f"{path.name} ({'safetensors metadata' if path.suffix == '.safetensors' else 'kiln checkpoint'})"
        )
    if not out:
        out, library = _from_library(model.name)
        source = (
            f"{library} (the weights file has no preprocessing record)" if source and library else library
        )
    return {"source": source, **out} if out else None
