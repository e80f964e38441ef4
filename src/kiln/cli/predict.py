"""`kiln predict` (argument parsing only; torch is imported in the handler)."""

from __future__ import annotations

import argparse
from typing import Any

PREDICT_DESCRIPTION = """\
Classify image files with a kiln checkpoint or any `kiln export` artifact: model.pt (TorchScript),
model.pt2, model.onnx, a Triton model folder (or a repository holding one model), a safetensors export
folder or its .safetensors file. The recorded preprocessing is applied (preprocess.json beside the
artifact, or the checkpoint's own record). Folders are walked for image files (hidden names skipped).
Unreadable, missing or empty files and folders without images are reported on stderr and in the output;
the exit status is non-zero only when no image could be read.

Each result names the class by its display name ("class"; "id" beside it when the class id differs) with
its probability. A multi-label model's result adds "labels": the classes whose sigmoid score is at or above
their threshold (tuned on val when training ended), highest first; its "top" is by sigmoid score.

--url http://HOST:PORT sends the files to a running `kiln serve` instead (the same results, computed by
the server). --explain OUT_DIR writes a Grad-CAM overlay per image and class, OUT_DIR/<stem>-<class>.png
(the predicted class; for multi-label models each label), for a checkpoint or a safetensors export.
"""


def _predict_here(args: argparse.Namespace) -> list[dict[str, Any]]:
    from kiln.errors import KilnError
    from kiln.inference.explain import Explainer
    from kiln.inference.predict import load_any, predict
    from kiln.inference.runtime import Classifier
    from kiln.paths import output_dir
    from kiln.registry import add_project_path

    if args.name:
        raise KilnError("--name names a model on a server: it goes with --url, not --model")
    add_project_path(None)
    explain_dir = output_dir(args.explain, "--explain") if args.explain else None  # before any model is read
    classifier = Classifier(load_any(args.model, trust=args.trust))
    explainer = Explainer(classifier, explain_dir) if explain_dir else None
    return predict(classifier, args.inputs, args.topk, args.batch_size, explainer=explainer)


def run(args: argparse.Namespace) -> int:
    from kiln.errors import DataError, KilnError
    from kiln.inference.predict import failure_summary, format_results

    if args.url:
        if args.explain:
            raise KilnError(
                "--explain runs the model here (Grad-CAM needs its gradients): use --model, not --url"
            )
        from kiln.inference.client import predict_url

        results = predict_url(args.url, args.name, args.inputs, args.topk, args.batch_size)
    else:
        results = _predict_here(args)
    print(format_results(results, args.format, args.topk))
    if not any("top" in r for r in results):
        raise DataError(failure_summary(results))  # names each input that gave nothing, and why
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="classify image files with a checkpoint, any exported model, or a running kiln serve",
        description=PREDICT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", metavar="PATH", help="checkpoint, export file or export folder")
    where.add_argument("--url", metavar="URL", help="a running kiln serve, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--name", metavar="MODEL", help="--url: the model's name on the server (default: its only one)"
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default: 5)")
    parser.add_argument(
        "--format", choices=["json", "csv"], default="json", help="output format (default: json)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: as training evaluates, e.g. 8 photos of 224 px on a CPU); "
        "with --url, files per request (default: 8)",
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="allow loading .pt2 files (torch.export.load unpickles; only for files you trust)",
    )
    parser.add_argument(
        "--explain",
        metavar="OUT_DIR",
        help="write Grad-CAM overlays, OUT_DIR/<stem>-<class>.png (a checkpoint or a safetensors export)",
    )
    parser.set_defaults(func=run)
