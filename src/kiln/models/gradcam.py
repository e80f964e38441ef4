"""Class activation maps for any CNN kiln trains or loads: where in the image the evidence for a class is.

``gradcam(model, x)`` -> [B, h, w] heatmaps in 0..1, one batched forward and one backward for the whole
batch; ``overlay`` blends a heatmap onto the photo; ``write_png`` saves the result.

The variant is HiResCAM (Draelos & Carin 2020): heatmap = ReLU(sum_c dy/dA_c * A_c), the element-wise
product of the feature map A and the gradient of the class logit y, summed over channels. Why this one:
- It is provably faithful for CNNs whose head is global average pooling + linear (ResNets, EfficientNets,
  MobileNets, kiln's resnet_small): there y = sum over positions of (w_y . A_ij) / (h w) + b, so the map
  is exactly each position's additive share of the logit. For those heads Grad-CAM (Selvaraju et al.
  2017: ReLU(sum_c mean_ij(dy/dA_c) * A_c)) gives the same map, because the gradient is the same at every
  position (the tests check this equality on a torchvision resnet18).
- For other heads (LeNet's flatten + MLP, an attention pool) Grad-CAM averages the gradient over space
  first, and can then highlight positions the logit does not depend on; HiResCAM keeps the gradient's
  spatial pattern (it is the first-order share of each position).
- Grad-CAM++ (Chattopadhay et al. 2018) weighs positions with higher-order derivatives derived for an
  exponential of the score, approximated from first-order gradients; it has no such exactness result.

The feature map is found automatically: for timm models, the output of ``forward_features`` (the model
is run as ``forward_head(forward_features(x))``, timm's own split); otherwise the output of the last module
to produce a 4-D tensor with more than one spatial position, i.e. the last feature map before global
pooling (torchvision's ``layer4`` for a ResNet, the second pooling of kiln's LeNet). ``layer`` (a module or
its name in ``model.named_modules()``) overrides that; a module run twice counts its last call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiln.atomic import write_atomic
from kiln.errors import ConfigError, did_you_mean

TargetClasses = int | Sequence[int] | torch.Tensor | None


def _spatial(output: object) -> bool:
    return isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1


def _find_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    names = dict(model.named_modules())
    if layer not in names:
        hint = did_you_mean(layer, [n for n in names if n])
        raise ConfigError(f"gradcam layer: {type(model).__name__} has no module '{layer[:100]}'{hint}")
    return names[layer]


def _hooked_forward(
    model: nn.Module, x: torch.Tensor, layer: nn.Module | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature map, logits) from one forward, the feature map caught by forward hooks."""
    caught: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: object, output: object) -> None:
        named = layer is not None and isinstance(output, torch.Tensor) and output.ndim == 4
        if named or _spatial(output):
            caught[:] = [output]  # type: ignore[list-item]  # hooks fire in execution order: keep the last

    modules = (
        [_find_layer(model, layer)] if layer is not None else [m for m in model.modules() if m is not model]
    )
    handles = [module.register_forward_hook(keep) for module in modules]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not caught:
        raise ConfigError(
            f"gradcam: {type(model).__name__} produces no 4-D feature map with more than one position "
            "(Grad-CAM needs a CNN, not an MLP); pass layer= to name one"
        )
    return caught[0], logits


def _forward(
    model: nn.Module, x: torch.Tensor, layer: nn.Module | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature map, logits), recorded by autograd from the feature map on at least."""
    if layer is None and hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        # timm: the last feature map, before global pooling. Only the head needs a graph: the backbone runs
        # without one, so a map costs one plain forward's time instead of 1.6x (benchmarks/explain_speed.py)
        with torch.no_grad():
            features = model.forward_features(x)
        if not _spatial(features):
            raise ConfigError(
                f"gradcam: {type(model).__name__}.forward_features returns {tuple(features.shape)}, not a "
                "[B, C, H, W] feature map (Grad-CAM needs a CNN); pass layer= to name one"
            )
        features.requires_grad_(True)
        return features, model.forward_head(features)
    # the input marked as requiring grad: the graph reaches the feature map even when the model is frozen
    return _hooked_forward(model, x.detach().requires_grad_(True), layer)


def _targets(target_classes: TargetClasses, logits: torch.Tensor) -> torch.Tensor:
    if target_classes is None:
        return logits.argmax(1)
    targets = torch.as_tensor(target_classes, dtype=torch.long, device=logits.device).expand(len(logits))
    bad = targets[(targets < 0) | (targets >= logits.shape[1])]
    if len(bad):
        raise ConfigError(
            f"gradcam: class {int(bad[0])} is out of range for a model of {logits.shape[1]} classes"
        )
    return targets


def activation_maps(
    model: nn.Module,
    x: torch.Tensor,
    target_classes: TargetClasses = None,
    layer: nn.Module | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw HiResCAM maps [B, h, w] >= 0, unnormalised; logits [B, K]) from one forward and one backward.

    The model runs in eval mode (BatchNorm uses its running statistics, so each image's map is independent
    of the rest of the batch; no statistics are updated) and is put back in its mode afterwards. The
    gradient goes to the feature map only (``torch.autograd.grad``): parameters' ``.grad`` are untouched,
    and a frozen model works."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            features, logits = _forward(model, x, layer)
            targets = _targets(target_classes, logits)
            # rows do not interact in eval mode, so the gradient of the sum gives each row its own gradient
            chosen = logits.gather(1, targets.unsqueeze(1)).sum()
            (grads,) = torch.autograd.grad(chosen, features)
    finally:
        model.train(was_training)
    maps = (grads * features).detach().float().sum(1).clamp_min(0)
    return maps, logits.detach()


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target_classes: TargetClasses = None,
    layer: nn.Module | str | None = None,
    upsample: bool = False,
) -> torch.Tensor:
    """[B, h, w] heatmaps in 0..1 (each image's divided by its own maximum; an image with no positive
    evidence is all 0) for ``target_classes`` (one class for all, or one per image; default: each image's
    predicted class). ``x`` is the model's normalised input. ``upsample``: bilinear to the input's size."""
    maps, _ = activation_maps(model, x, target_classes, layer)
    heatmaps = maps / maps.amax((1, 2), keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
    if upsample:
        # bilinear weights are convex, so the upsampled map stays within 0..1
        heatmaps = F.interpolate(
            heatmaps.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        heatmaps = heatmaps.squeeze(1)
    return heatmaps


def overlay(
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray | torch.Tensor,
    alpha: float = 0.4,
    colormap: str = "jet",
) -> np.ndarray:
    """[H, W, 3] uint8: the photo (uint8 [H, W, 3], [H, W, 1] or [H, W]) blended with the heatmap (0..1,
    any size: resized bilinearly to the photo) in a matplotlib colormap, ``alpha`` the heatmap's share."""
    from matplotlib import colormaps  # the colormap registry only: no pyplot, no backend

    photo = np.asarray(image)
    if photo.dtype != np.uint8:
        raise ValueError(f"overlay takes a uint8 image, got {photo.dtype}")
    if photo.ndim == 2:
        photo = photo[:, :, None]
    photo = np.repeat(photo, 3, axis=2) if photo.shape[2] == 1 else photo[:, :, :3]
    heat = torch.as_tensor(np.asarray(heatmap), dtype=torch.float32)[None, None]
    heat = F.interpolate(heat, size=photo.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    colors = colormaps[colormap](heat.clamp(0, 1).numpy())[:, :, :3]  # RGBA floats in 0..1
    blended = (1 - alpha) * photo.astype(np.float64) + alpha * 255 * colors
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an [H, W, 3] uint8 array as a PNG, atomically (a reader never sees half a file)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    target = Path(path)
    write_atomic(target, buffer.getvalue())
    return target
