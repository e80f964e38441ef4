"""Grad-CAM's cost against a plain forward pass, tf_efficientnet_lite0 (real ImageNet weights) at 224 px:

    python -m benchmarks.explain_speed [--batch 16] [--batches 4] [--repeats 3] [--threads N]
    python -m benchmarks.explain_speed --predict [--checkpoint CKPT] [--files 64] [--repeats 3]

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

``--predict``: the commands as a user runs them, in one process over the same JPEGs (the hymenoptera val
photos): ``kiln predict`` against ``kiln predict --explain`` (decode, preprocess, forward, and for the
second the Grad-CAM pass per batch plus one overlay PNG per photo), images/s, best of ``--repeats``,
interleaved. The checkpoint: ``--checkpoint``, or configs/photos_fixed.yaml trained for 1 epoch (frozen
tf_efficientnet_lite0, the same real weights). Measured on the 2-core development CPU shared with other
work (64 photos, batches of 4 as training's evaluation picks for 224 px on a CPU, best of 3), while
other jobs kept the load average at 4 (the cores' normal speed is ~10x this): kiln predict 5.0 images/s,
kiln predict --explain 2.0 (2.53x kiln predict's time); a second run at load 4-7: 2.9 and 1.0 (3.05x).
--explain pays for Grad-CAM's own forward (the predictions stay those of the plain forward, the same
runner as kiln predict), the backward to the feature map, and per photo a colormap blend and a PNG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, SHARED
from kiln.models.gradcam import gradcam

WEIGHTS = SHARED / "tf_efficientnet_lite0_imagenet.safetensors"


def images_per_s(step, batches: list[torch.Tensor]) -> float:
    step(batches[0])  # warm-up: allocator, oneDNN kernels
    start = time.perf_counter()
    for x in batches:
        step(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def photos_checkpoint(work: Path) -> Path:
    """configs/photos_fixed.yaml trained for one epoch (frozen backbone: its features are computed once)."""
    run = work / "run"
    command = [sys.executable, "-m", "kiln", "train", "-c", str(ROOT / "configs/photos_fixed.yaml")]
    overrides = [f"run.dir={run}", "trainer.epochs=1", "trainer.progress=off", "logging.tensorboard=false"]
    subprocess.run([*command, *overrides], check=True, capture_output=True, cwd=ROOT)
    return run / "checkpoints" / "best.pt"


def predict_speed(args: argparse.Namespace) -> None:
    """kiln predict against kiln predict --explain, images/s over the same photos."""
    from kiln.inference.explain import Explainer
    from kiln.inference.predict import load_any, predict
    from kiln.inference.runtime import Classifier

    files = [str(f) for f in sorted((ROOT / "data/hymenoptera_data/val").rglob("*.jpg"))[: args.files]]
    if not files:
        sys.exit("no photos: data/hymenoptera_data/val is empty; run `make data`")
    with tempfile.TemporaryDirectory(prefix="kiln-explain-speed-") as work:
        checkpoint = Path(args.checkpoint) if args.checkpoint else photos_checkpoint(Path(work))
        classifier = Classifier(load_any(checkpoint))
        out = Path(work) / "overlays"
        out.mkdir()
        runs = {
            "kiln predict": lambda: predict(classifier, files, warn=print),
            "kiln predict --explain": lambda: predict(
                classifier, files, warn=print, explainer=Explainer(classifier, out)
            ),
        }
        for run in runs.values():  # warm-up: allocator, oneDNN kernels, the colormap
            run()
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                best[name] = max(best[name], len(files) / (time.perf_counter() - start))
    print(f"{len(files)} photos, batches of {classifier.batch_size}, {torch.get_num_threads()} CPU threads")
    for name, speed in best.items():
        ratio = best["kiln predict"] / speed
        print(f"{name + ':':24s}{speed:7.1f} images/s  ({ratio:.2f}x kiln predict's time)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="timed batches per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--predict", action="store_true", help="kiln predict against kiln predict --explain")
    p.add_argument("--checkpoint", help="--predict: a kiln checkpoint (default: photos_fixed, 1 epoch)")
    p.add_argument("--files", type=int, default=64, help="--predict: photos per run")
    args = p.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"no weights: {WEIGHTS} is absent")
    torch.set_num_threads(args.threads)
    if args.predict:
        predict_speed(args)
        return
    import timm
    from safetensors.torch import load_file

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
