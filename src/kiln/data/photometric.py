"""Colour jitter, TrivialAugmentWide and RandAugment on whole batches of float images in [0, 1], with
per-image parameters (torchvision applies one draw to a whole call; here every image gets its own).

The operations and their magnitude ranges are torchvision's (``transforms.autoaugment``); the tests compare
the tables and the parameter distributions with torchvision.transforms.v2. Geometric operations resample
bilinearly (torchvision's default for these is nearest) with a black fill, as torchvision does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BINS = 31  # torchvision's num_magnitude_bins


def _space(wide: bool, size: tuple[int, int]) -> dict[str, tuple[torch.Tensor, bool]]:
    """op -> (magnitude per bin, signed): TrivialAugmentWide's (wide) or RandAugment's table."""
    lin = torch.linspace
    top = 0.99 if wide else 0.9
    return {
        "Identity": (torch.zeros(BINS), False),
        "ShearX": (lin(0.0, 0.99 if wide else 0.3, BINS), True),
        "ShearY": (lin(0.0, 0.99 if wide else 0.3, BINS), True),
        "TranslateX": (lin(0.0, 32.0 if wide else 150.0 / 331.0 * size[1], BINS), True),
        "TranslateY": (lin(0.0, 32.0 if wide else 150.0 / 331.0 * size[0], BINS), True),
        "Rotate": (lin(0.0, 135.0 if wide else 30.0, BINS), True),
        "Brightness": (lin(0.0, top, BINS), True),
        "Color": (lin(0.0, top, BINS), True),
        "Contrast": (lin(0.0, top, BINS), True),
        "Sharpness": (lin(0.0, top, BINS), True),
        "Posterize": ((8 - (torch.arange(BINS) / ((BINS - 1) / (6 if wide else 4))).round()).float(), False),
        "Solarize": (lin(255.0, 0.0, BINS), False),
        "AutoContrast": (torch.zeros(BINS), False),
        "Equalize": (torch.zeros(BINS), False),
    }


OPS = list(_space(True, (1, 1)))


def gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f.view(-1, 1, 1, 1) * a + (1 - f.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, gray(x).mean((1, 2, 3), keepdim=True), f)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, gray(x), f)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` (a fraction of the colour circle, in [-0.5, 0.5]) per image."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    mx, mn = x.max(1).values, x.min(1).values
    delta = mx - mn
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    s = torch.where(mx > 0, delta / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    k = (torch.stack([h * 6 + 5, h * 6 + 3, h * 6 + 1], 1)) % 6  # the standard HSV -> RGB, vectorised
    return mx[:, None] - mx[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def sharpness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device, dtype=x.dtype) / 13
    c = x.shape[1]
    smooth = F.conv2d(x, k.expand(c, 1, 3, 3), groups=c)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = smooth  # as PIL and torchvision: the border keeps its pixels
    return _blend(x, blurred, f)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    levels = (2 ** (8 - bits)).view(-1, 1, 1, 1).to(x.dtype)
    return torch.floor(torch.floor(x * 255 + 1e-4) / levels) * levels / 255


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x * 255 >= threshold.view(-1, 1, 1, 1), 1 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 1)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel, on the 256 levels of the uint8 image."""
    b, c, h, w = x.shape
    v = (x * 255).round().long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(
        1, v, torch.ones_like(v, dtype=torch.float32)
    )
    last = hist.gather(1, v.max(1, keepdim=True).values)  # torchvision: step from all but the top level
    step = ((h * w - last) / 255).floor()
    lut = ((hist.cumsum(1) - hist + (step / 2).floor()) / step.clamp_min(1)).floor().clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, v), v.float()) / 255
    return out.view(b, c, h, w)


def affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample each image through its 2x3 map from output to input pixel coordinates (pixel centres at
    +0.5), bilinear, black outside."""
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device) + 0.5, torch.arange(w, device=x.device) + 0.5, indexing="ij"
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3).to(x.dtype)
    src = pts @ matrix.to(x).transpose(1, 2)  # [B, H*W, 2] input pixel coordinates
    grid = torch.stack([src[..., 0] / w * 2 - 1, src[..., 1] / h * 2 - 1], -1).view(-1, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _geometric(op: str, m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Output -> input pixel maps for the geometric ops (shears about the top-left corner, as torchvision)."""
    n = len(m)
    mat = torch.eye(3).repeat(n, 1, 1)
    if op == "ShearX":
        mat[:, 0, 1] = m
    elif op == "ShearY":
        mat[:, 1, 0] = m
    elif op == "TranslateX":
        mat[:, 0, 2] = -m
    elif op == "TranslateY":
        mat[:, 1, 2] = -m
    else:  # Rotate by m degrees about the centre
        cy, cx = size[0] / 2, size[1] / 2
        a = torch.deg2rad(m)
        cos, sin = torch.cos(a), torch.sin(a)
        mat[:, 0, 0], mat[:, 0, 1], mat[:, 1, 0], mat[:, 1, 1] = cos, -sin, sin, cos
        mat[:, 0, 2] = cx - cos * cx + sin * cy
        mat[:, 1, 2] = cy - sin * cx - cos * cy
    return mat[:, :2]


def apply_op(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    """One operation with a magnitude per image (already signed)."""
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        return affine(x, _geometric(op, m, tuple(x.shape[2:])))  # type: ignore[arg-type]
    table = {"Brightness": brightness, "Color": saturation, "Contrast": contrast, "Sharpness": sharpness}
    if op in table:
        return table[op](x, (1.0 + m).to(x))
    if op == "Posterize":
        return posterize(x, m.long())
    if op == "Solarize":
        return solarize(x, m.to(x))
    if op == "AutoContrast":
        return autocontrast(x)
    if op == "Equalize":
        return equalize(x)
    return x


def draw_ops(
    n: int, kind: str, num_ops: int, magnitude: int, size: tuple[int, int], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: ``num_ops`` op indices into OPS and their signed magnitudes. ``trivial``: one op with a
    uniform magnitude bin (TrivialAugmentWide); ``rand``: ``num_ops`` ops at bin ``magnitude``
    (RandAugment)."""
    space = _space(kind == "trivial", size)
    k = 1 if kind == "trivial" else num_ops
    ops = torch.randint(0, len(OPS), (n, k), generator=g)
    bins = torch.randint(0, BINS, (n, k), generator=g) if kind == "trivial" else torch.full((n, k), magnitude)
    table = torch.stack([space[o][0] for o in OPS])  # [ops, bins]
    signed = torch.tensor([space[o][1] for o in OPS])
    sign = torch.where((torch.rand((n, k), generator=g) < 0.5) & signed[ops], -1.0, 1.0)
    return ops, table[ops, bins] * sign


def auto_augment(x: torch.Tensor, ops: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
    """Apply each image's ops in order; one batched call per op that any image uses."""
    for j in range(ops.shape[1]):
        for k, op in enumerate(OPS):
            sel = (ops[:, j] == k).nonzero().flatten().to(x.device)
            if len(sel) and op != "Identity":
                x = x.index_copy(0, sel, apply_op(x.index_select(0, sel), op, mags[:, j].to(x.device)[sel]))
    return x


def jitter_factors(n: int, b: float, c: float, s: float, h: float, g: torch.Generator) -> torch.Tensor:
    """[n, 4] brightness, contrast, saturation factors uniform in [max(0, 1 - v), 1 + v] and a hue shift
    uniform in [-h, h], as torchvision's ColorJitter draws them (one draw per image here)."""
    u = torch.rand((n, 4), generator=g)
    lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, h])
    return lo + u * (hi - lo)


def color_jitter(x: torch.Tensor, f: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in ``order`` (torchvision draws a random order per call)."""
    f = f.to(x.device)
    fns = [brightness, contrast, saturation, hue]
    for i in order:
        x = fns[i](x, f[:, i].to(x))
    return x
