"""A frozen backbone, computed once per image and view, ever. With ``model.freeze: backbone`` and frozen
BatchNorm only the head learns, so the backbone's output for an image and an augmentation view never
changes: kiln computes it once, keeps it in the cache (``data/cache.py``) under a key made of the backbone's
weights, the images and the view, and every later run, resume, tune trial and ``kiln eval`` of a frozen run
reads it back instead of running the backbone again.

Random photo augmentation draws from a bounded, seeded set of views (``data.augment.views``; 4 when unset
with a frozen backbone): the first epoch that needs features computes all views in one pass over the
images (each image decoded once), later epochs cycle through them. Validation and test features are the
evaluation view, test-time views averaged (exact for the linear head).

Measured on imagenette (9,469 train photos, tf_efficientnet_lite0 at 160 px, 2 CPU cores): 4 views of the
train split take ~2 min; the next run reads them in under a second.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.console import Progress, log
from kiln.data.cache import building, peek, store
from kiln.engine.distributed import LOCAL, Dist, all_sum, broadcast_object, broadcast_tensors
from kiln.engine.evaluate import EvalOptions
from kiln.engine.loop import StepOptions
from kiln.models.transfer import head_name, without_head

Prepare = Callable[[torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, float]]]  # batch, idx -> views


def digest(model: nn.Module, head: str) -> str:
    """A hash of the backbone's weights and buffers (everything but the head): what its features are a
    function of. ~0.05 s for tf_efficientnet_lite0's 4.7 M parameters."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(head + "."):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    return h.hexdigest()[:32]


@dataclass(frozen=True)
class FeatureKeys:
    """Makes the cache key of one split's features in one view."""

    backbone: str  # digest() of the frozen weights
    numerics: str  # what else changes the numbers: precision, memory layout, the normalisation

    def key(self, content: str | None, view: dict[str, Any]) -> str | None:
        if content is None:  # a user's Dataset: nothing stable to key on, kept in memory only
            return None
        text = json.dumps(
            {"v": 1, "backbone": self.backbone, "numerics": self.numerics, "images": content, "view": view},
            sort_keys=True,
            default=str,
        )
        return "f" + hashlib.sha256(text.encode()).hexdigest()[:31]


@torch.no_grad()
def extract(
    model: nn.Module,
    loader: Any,
    views: dict[str, Prepare],
    step: StepOptions,
    batch_size: int,
    desc: str,
    dist: Dist = LOCAL,
) -> dict[str, torch.Tensor]:
    """The backbone's features of every sample of ``loader`` for each view, in one pass over the images
    (each batch decoded once, every view computed from it): {view name: float32 [N, D]}. Under DDP each rank
    computes every ``world``-th batch and all ranks end with every row (an all-reduce of the zero-filled
    rest)."""
    out: dict[str, torch.Tensor] = {}
    n = loader.order.n
    mine = math.ceil(n / dist.world)
    with without_head(model) as backbone, Progress(desc, mine * len(views), "img") as progress:
        for x, idx in loader.in_order(batch_size, dist.rank, dist.world):
            for name, prepare in views.items():
                inputs = prepare(x, idx)
                if step.channels_last:
                    inputs = [(v.contiguous(memory_format=torch.channels_last), w) for v, w in inputs]
                with step.autocast():
                    f = sum(w * backbone(v).float() for v, w in inputs)
                if name not in out:
                    out[name] = torch.zeros((n, *f.shape[1:]), dtype=torch.float32, device=f.device)
                out[name][idx.to(f.device)] = f
                progress.update(len(idx))
    if dist.enabled:
        shapes = broadcast_object(dist, {k: tuple(v.shape) for k, v in out.items()})  # a rank may have none
        out = {
            k: all_sum(dist, out[k] if k in out else torch.zeros(shape, device=loader.device))
            for k, shape in shapes.items()
        }
    return out


def cached_features(
    cache_dir: Path | None,
    keys: dict[str, str | None],
    compute: Callable[[Sequence[str]], dict[str, torch.Tensor]],
    what: str,
    device: torch.device,
    dist: Dist = LOCAL,
) -> dict[str, torch.Tensor]:
    """{name: features} for every name of ``keys``: read from the cache where it holds them, the rest
    computed together by ``compute(names)`` (once: another process computing the same set is waited for)
    and stored. Under DDP rank 0 alone reads, locks and writes the cache; the ranks compute the missing
    features together and rank 0 sends the ones it read."""

    def read() -> dict[str, torch.Tensor]:
        found = {}
        for name, key in keys.items():
            arrays = peek(cache_dir, key, ("features",)) if key else None
            if arrays is not None:
                found[name] = torch.from_numpy(np.array(arrays["features"])).to(device)
        return found

    found = read() if dist.is_main else {}
    missing = broadcast_object(dist, [name for name in keys if name not in found])
    if not missing:
        log(f"kiln: {what}: read from the cache ({len(keys)} view(s); no backbone pass)")
        return broadcast_tensors(dist, found, device)
    group = "g" + hashlib.sha256("|".join(str(keys[m]) for m in missing).encode()).hexdigest()[:31]
    lockable = dist.is_main and all(keys[m] for m in missing)
    with building(cache_dir if lockable else None, group, what) as usable:
        if usable:
            found.update(read())  # what the process we may have waited for computed
        missing = broadcast_object(dist, [name for name in keys if name not in found])
        if missing:
            computed = compute(missing)
            for name in missing:
                key = keys[name]
                if usable and key and cache_dir is not None:
                    store(
                        cache_dir,
                        key,
                        {"features": computed[name].cpu().numpy()},
                        {"kind": "features", "what": f"{what} ({name})", "root": what},
                    )
            found.update(computed)
    return {
        **broadcast_tensors(dist, {k: v for k, v in found.items() if k not in missing}, device),
        **{k: found[k] for k in missing},
    }


def feature_keys(model: nn.Module, precision: str, channels_last: bool, preprocess: Any) -> FeatureKeys:
    """The cache keys of ``model``'s backbone features: its weights, and what besides the weights and the
    images changes the numbers (precision, memory layout, the normalisation)."""
    numerics = f"{precision}|channels_last={channels_last}|{json.dumps(preprocess.to_json(), sort_keys=True)}"
    return FeatureKeys(digest(model, head_name(model)), numerics)


def eval_features(
    model: nn.Module,
    loader: Any,
    transform: Any,
    keys: FeatureKeys,
    content: str | None,
    split: str,
    tta: str,
    step: StepOptions,
    batch_size: int,
    cache_dir: Path | None,
    dist: Dist = LOCAL,
) -> torch.Tensor:
    """A split's evaluation-view features (test-time views averaged), every sample's on every rank: from
    the cache, else one pass (sharded over the ranks under DDP)."""
    key = keys.key(content, {"split": split, "view": "eval", "tta": tta})

    def compute(names: Sequence[str]) -> dict[str, torch.Tensor]:
        loader.materialize()
        return extract(
            model,
            loader,
            {split: eval_prepare(transform, tta)},
            step,
            batch_size,
            f"backbone features of {loader.order.n:,} {split} images",
            dist,
        )

    found = cached_features(cache_dir, {split: key}, compute, f"{split} features", loader.device, dist)
    return found[split]


def eval_prepare(transform: Any, tta: str) -> Prepare:
    """Evaluation features: the centre view, test-time views averaged (exact for a linear head)."""
    from kiln.engine.evaluate import tta_views

    return lambda x, idx: tta_views(transform.eval(x), tta)


def head_options(step: StepOptions) -> StepOptions:
    """A step on features: no memory-format change or autocast (a linear head on float32 features)."""
    import contextlib
    from dataclasses import replace

    return replace(step, channels_last=False, autocast=contextlib.nullcontext)


def head_eval_options(evaluation: EvalOptions) -> EvalOptions:
    return EvalOptions(metric_fns=evaluation.metric_fns)  # test-time views are inside the features
