"""`kiln predict` (argument parsing only; torch is imported in the handler)."""

from __future__ import annotations

import argparse

PREDICT_DESCRIPTION = """\
Classify image files with a kiln checkpoint or any `kiln export` artifact: model.pt (TorchScript),
model.pt2, model.onnx, a Triton model folder (or a repository holding one model), a safetensors export
folder or its .safetensors file. The recorded preprocessing is applied (preprocess.json beside the
artifact, or the checkpoint's own record). Folders are walked for image files (hidden names skipped).
Unreadable, missing or empty files and folders without images are reported on stderr and in the output;
the exit status is non-zero only when no image could be read.
"""


def run(args: argparse.Namespace) -> int:
    from kiln.errors import DataError
    from kiln.export.predict import failure_summary, format_results, load_any, predict
    from kiln.registry import add_project_path

    add_project_path(None)
    loaded = load_any(args.model, trust=args.trust)
    results = predict(loaded, args.inputs, args.topk, args.batch_size)
    print(format_results(results, args.format, args.topk))
    if not any("top" in r for r in results):
        raise DataError(failure_summary(results))  # names each input that gave nothing, and why
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a checkpoint or any exported model",
        description=PREDICT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="PATH", help="checkpoint, export file or export folder")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default: 5)")
    p.add_argument("--format", choices=["json", "csv"], default="json", help="output format (default: json)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: as training evaluates, e.g. 8 photos of 224 px on a CPU)",
    )
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow loading .pt2 files (torch.export.load unpickles; only for files you trust)",
    )
    p.set_defaults(func=run)
