"""Prove an exported artifact computes what the eager model computes, on real images, before kiln says so.

Batches: a real batch from the checkpoint's own data (test split, else val, else train), one image alone, a
batch of ``max_batch_size`` (the dynamic batch dimension at both ends), and the same real images inverted
(255 - x): still valid images, but with other statistics, so code that branches on tensor values takes the
other branch there and a trace that froze one branch shows up as a difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.config import AugmentConfig, Config
from kiln.data import Preprocess, plan
from kiln.data.augment import BatchTransform
from kiln.errors import KilnError
from kiln.export import VerificationError
from kiln.export.base import RunMany

DATA_IMAGES = 32  # images in the real-data batch


@dataclass
class Batches:
    inputs: dict[str, np.ndarray]  # case name -> normalised float32 [N, C, H, W]
    example: torch.Tensor  # 2 real images, the example torch.export / trace / ONNX record with
    source: dict[str, Any]  # where the images came from, for the report


def _uint8_images(cfg: Config, pre: Preprocess) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Up to DATA_IMAGES uint8 images of the checkpoint's data, or None and why not."""
    try:
        data_plan = plan(cfg.data, spec=pre.spec)
    except KilnError as e:  # data moved or not on this machine: say so, verify on synthetic images
        return None, {"source": "synthetic", "reason": f"the training data could not be loaded ({e})"}
    for split in ("test", "val", "train"):  # the first split there is: only that one is loaded
        source = data_plan.split(split)
        if source is not None and len(source):
            break
    else:
        return None, {"source": "synthetic", "reason": "the data has no images"}
    try:  # decoded as evaluation stores them (the centre crop for photos), whatever the split
        few = source.subset(list(range(min(DATA_IMAGES, len(source)))))
        images = few.to_memory(pre.spec, None, 1, False, f"{split} images")[0]
    except KilnError as e:
        return None, {"source": "synthetic", "reason": f"the training data could not be read ({e})"}
    transform = BatchTransform(list(pre.mean), list(pre.std), AugmentConfig(), 0, spec=pre.spec)
    x = transform.eval_view(images)  # what the model is given
    if tuple(x.shape[1:]) != pre.input_shape or x.dtype != torch.uint8:
        return None, {
            "source": "synthetic",
            "reason": f"the data's images are {tuple(x.shape[1:])} "
            f"{x.dtype}, the checkpoint's model takes {pre.input_shape} uint8",
        }
    return x, {"source": f"{cfg.data.source} {split} split", "images": int(x.shape[0])}


def _cycle(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.repeat(math.ceil(n / len(x)), 1, 1, 1)[:n]


def build_batches(cfg: Config, pre: Preprocess, max_batch_size: int) -> Batches:
    images, source = _uint8_images(cfg, pre)
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (DATA_IMAGES, *pre.input_shape), generator=g, dtype=torch.uint8)
    norm = BatchTransform(list(pre.mean), list(pre.std), AugmentConfig(), 0)  # training's arithmetic

    def f(x: torch.Tensor) -> np.ndarray:
        return norm.normalize(x.contiguous()).numpy()

    data = images[:max_batch_size]  # never more than the artifact is meant to take at once
    source["images"] = int(data.shape[0])
    inputs = {
        "data": f(data),
        "batch-1": f(data[:1]),
        f"batch-{max_batch_size}": f(_cycle(data, max_batch_size)),
        "inverted": f(255 - data),
    }
    return Batches(inputs, torch.from_numpy(f(_cycle(data, 2))), source)


def eager_outputs(model: nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model.eval()
    with torch.inference_mode():
        return {k: model(torch.from_numpy(v)).float().numpy() for k, v in inputs.items()}


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    cases = []
    for name, ref in reference.items():
        out = got.get(name)
        case: dict[str, Any] = {"case": name, "batch": int(ref.shape[0])}
        if out is None or out.shape != ref.shape:
            case.update(
                max_abs_diff=math.inf,
                error=f"output shape {None if out is None else list(out.shape)}, expected {list(ref.shape)}",
            )
        elif not np.isfinite(out).all():
            case.update(max_abs_diff=math.inf, error="non-finite outputs")
        else:
            case["max_abs_diff"] = float(np.abs(out.astype(np.float64) - ref).max()) if ref.size else 0.0
            case["top1_agreement"] = float((out.argmax(1) == ref.argmax(1)).mean())
        cases.append(case)
    return cases


def verify(model: nn.Module, batches: Batches, run_many: RunMany, tolerance: float) -> dict[str, Any]:
    """Run the artifact and the eager model on every batch; the report says by how much they differ."""
    reference = eager_outputs(model, batches.inputs)
    cases = compare(reference, run_many(batches.inputs))
    worst = max(cases, key=lambda c: c["max_abs_diff"])
    return {
        "passed": worst["max_abs_diff"] <= tolerance,
        "tolerance": tolerance,
        "max_abs_diff": worst["max_abs_diff"],
        "worst_case": worst["case"],
        "cases": cases,
        "data": batches.source,
    }


def raise_if_failed(check: dict[str, Any], artifact: str) -> None:
    if check["passed"]:
        return
    worst = next(c for c in check["cases"] if c["case"] == check["worst_case"])
    why = (
        worst.get("error") or f"max abs diff {worst['max_abs_diff']:.3g} > tolerance {check['tolerance']:.0e}"
    )
    hint = (
        " (the 'inverted' images take other branches: the export froze data-dependent control flow; "
        "use --method script)"
        if worst["case"] == "inverted"
        else ""
    )
    raise VerificationError(
        f"{artifact}: verification failed on the '{worst['case']}' batch "
        f"({worst['batch']} images): {why}{hint}; see export.json beside it"
    )


def format_check(check: dict[str, Any]) -> list[str]:
    src = check["data"]
    lines = [
        f"  checked on {src.get('images', '?')} images from {src['source']}"
        + (f" ({src['reason']})" if "reason" in src else "")
    ]
    for c in check["cases"]:
        detail = (
            c.get("error")
            or f"max abs diff {c['max_abs_diff']:.2e}, top-1 agreement {c['top1_agreement']:.0%}"
        )
        lines.append(f"    {c['case']:<10} batch {c['batch']:>4}: {detail}")
    verdict = "OK" if check["passed"] else "FAILED"
    lines.append(
        f"  max abs diff {check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.0e}): {verdict}"
    )
    return lines
