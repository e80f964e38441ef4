"""Framework overhead on the CPU: the tutorial LeNet on the local CIFAR-10 copy, at batch 4 and 256.

(a) the classic loop (ImageFolder + per-sample transforms + DataLoader, 2 workers),
(b) a raw loop over preloaded tensors with the same model and optimizer (the compute limit),
(c) kiln train (memory loader, batch normalisation on the device, no per-step host sync but the loss read).
Throughput = images / seconds of the training loop alone, data loading included, for each.
Targets: kiln >= 0.95 x raw at batch 256, >= 0.85 x raw at batch 4, kiln >= 3 x classic at batch 4.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.common import cifar10_dir, classic_train, kiln_run, preloaded_cifar, raw_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root", help="CIFAR-10 image folder (default data/cifar10, unpacked from ../shared/data)"
    )
    p.add_argument("--images", type=int, default=12_000, help="images per measurement (per batch size)")
    p.add_argument(
        "--classic-images", type=int, default=50_000, help="images for the classic loop (a full epoch)"
    )
    p.add_argument("--repeats", type=int, default=2, help="raw and kiln runs, interleaved; the best counts")
    args = p.parse_args()
    root = cifar10_dir(args.root)
    torch.set_num_threads(torch.get_num_threads())
    x, y = preloaded_cifar(root)  # also warms kiln's decode cache, so no run below pays for decoding
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; raw and kiln: best of "
        f"{args.repeats} runs of "
        f"{args.images} images; classic: {args.classic_images} images\n"
    )
    print(
        f"{'batch':>5}  {'classic img/s':>13}  {'raw img/s':>10}  {'kiln img/s':>10}  {'kiln/raw':>8}  "
        f"{'kiln/classic':>12}"
    )
    for bs in (4, 256):
        _, secs, seen = classic_train(root, bs, max_images=args.classic_images)
        classic = seen / secs
        raw_best = kiln_best = 0.0
        for _ in range(args.repeats):
            raw_best = max(raw_best, args.images / raw_train(x, y, bs, args.images))
            with tempfile.TemporaryDirectory() as d:
                m = kiln_run(
                    [
                        "data.source=folder",
                        f"data.root={root}",
                        f"data.batch_size={bs}",
                        "trainer.epochs=1",
                        f"data.train_limit={args.images}",
                        f"run.dir={d}",
                        "data.eval_batch_size=1000",
                    ]
                )
            kiln_best = max(kiln_best, m[0]["images_per_s"])
        print(
            f"{bs:>5}  {classic:>13,.0f}  {raw_best:>10,.0f}  {kiln_best:>10,.0f}  "
            f"{kiln_best / raw_best:>8.2f}  "
            f"{kiln_best / classic:>12.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
