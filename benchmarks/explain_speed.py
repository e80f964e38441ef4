"""Grad-CAM's cost against a plain forward pass, tf_efficientnet_lite0 (real ImageNet weights) at 224 px:

    python -m benchmarks.explain_speed [--batch 16] [--batches 4] [--repeats 3] [--threads N]

(a) the plain forward of evaluation (``torch.inference_mode``, eval mode),
(b) ``kiln.models.gradcam.gradcam`` on the same batches, each target the predicted class: timm's
    ``forward_features`` without autograd, the head with it, one backward to the feature map, the maps;
(c) the same maps by the generic route torchvision and kiln's own models take (forward hooks, here
    ``layer="bn2"``, the same feature map): autograd records the whole forward.
Throughput = images / seconds over ``--batches`` batches after one warm-up batch; the best of ``--repeats``,
(a), (b) and (c) interleaved so they see the same machine load.

Measured on the 2-core development CPU shared with other work (batch 16, 2 threads, best of 3): forward
71.0 images/s, Grad-CAM 71.2 (1.00x the forward's time), the hooks route 43.0 (1.65x); a second run at a
busier moment: 45.2, 46.2 (0.98x), 28.1 (1.61x). The backward to the feature map costs next to nothing
(global pooling and one linear layer); what the hooks route pays for is autograd recording the backbone.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.common import SHARED
from kiln.models.gradcam import gradcam

WEIGHTS = SHARED / "tf_efficientnet_lite0_imagenet.safetensors"


def images_per_s(step, batches: list[torch.Tensor]) -> float:
    step(batches[0])  # warm-up: allocator, oneDNN kernels
    start = time.perf_counter()
    for x in batches:
        step(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="timed batches per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"no weights: {WEIGHTS} is absent")
    import timm
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(load_file(WEIGHTS))
    model.eval()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch, 3, 224, 224, generator=generator) for _ in range(args.batches)]

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model(x)

    steps = {
        "plain forward": forward,
        "Grad-CAM": lambda x: gradcam(model, x),
        "Grad-CAM, hooks": lambda x: gradcam(model, x, layer="bn2"),
    }
    best = dict.fromkeys(steps, 0.0)
    for _ in range(args.repeats):
        for name, step in steps.items():
            best[name] = max(best[name], images_per_s(step, batches))
    print(f"tf_efficientnet_lite0, 224 px, batch {args.batch}, {args.threads} CPU threads")
    for name, speed in best.items():
        ratio = best["plain forward"] / speed
        print(f"{name + ':':17s}{speed:7.1f} images/s  ({ratio:.2f}x the forward's time)")


if __name__ == "__main__":
    main()
