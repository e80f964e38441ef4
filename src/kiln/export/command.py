"""`kiln export` and `kiln predict` (argument parsing only; torch and friends are imported in the handlers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.export import FORMATS, TOLERANCE
from kiln.registry import add_project_path

EXPORT_DESCRIPTION = """\
Write a checkpoint as a deployable artifact, load it back, and check it against the eager model on real
images from the checkpoint's data (a real batch, batch 1, batch --max-batch-size, and the same images
inverted) to a max abs logit difference of --tolerance. The report is printed and saved as export.json;
preprocess.json (input size, channel order, mean/std, 0-255 -> 0-1 scale, class names) is written beside
the model. A failed check exits with status 4.

formats:
  torchscript  model.pt, loaded back in a fresh Python process that does not import kiln.
               --method trace (default) runs the model once on example images and records the tensor ops
               that ran: fast and works for most Python, but a Python `if`/loop that depends on tensor
               values is frozen to the branch the example took, silently. kiln refuses a trace when
               PyTorch flags this (TracerWarning) and checks inverted images, which take other branches.
               --method script compiles the Python source of forward() and keeps data-dependent control
               flow, but accepts only a typed subset of Python (no arbitrary libraries, dynamic attributes,
               **kwargs...). Choose script when the model branches on values; trace otherwise.
               TorchScript is deprecated in recent torch; kiln silences its warnings and says so once.
  export       model.pt2, a torch.export program with a symbolic batch dimension.
  onnx         model.onnx, one self-contained file (weights inside), tensors "input" -> "logits",
               dynamic batch; checked in onnxruntime.
  triton       a Triton model repository: OUT/NAME/config.pbtxt, labels.txt, 1/model.pt (--backend
               torchscript, platform pytorch_libtorch, INPUT__0 -> OUTPUT__0) or 1/model.onnx (--backend onnx,
               platform onnxruntime_onnx). config.pbtxt is parsed as Triton's ModelConfig and cross-checked.
               Serve with: tritonserver --model-repository=OUT
  safetensors  model.safetensors (tensors only, nothing can execute on load) + model.json (model name and
               args, classes, preprocessing): the safe format to share; kiln rebuilds the model from it.
"""

PREDICT_DESCRIPTION = """\
Classify image files with a kiln checkpoint or any `kiln export` artifact: model.pt (TorchScript),
model.pt2, model.onnx, a Triton model folder (or a repository holding one model), a safetensors export
folder or its .safetensors file. The recorded preprocessing is applied (preprocess.json beside the
artifact, or the checkpoint's own record). Folders are walked for image files. Unreadable files are
reported on stderr and in the output; the exit status is non-zero only when no image could be read.
"""


def run_export(args: argparse.Namespace) -> int:
    from kiln.export.run import export_checkpoint

    add_project_path(args.config)
    from kiln.export.verify import format_check

    rep = export_checkpoint(
        args.checkpoint, args.format, args.out, args.name, args.max_batch_size, args.method, args.backend,
        args.overrides, args.config, args.tolerance, args.allow_tracer_warnings, args.instance_kind,
    )  # fmt: skip
    how = {"torchscript": f" ({rep['method']})", "triton": f" ({rep['backend']})"}.get(rep["format"], "")
    print(f"kiln: exported {rep['model']} as {rep['format']}{how} -> {rep['artifact']} "
          f"({rep['size_bytes'] / 1024:,.0f} KiB)")  # fmt: skip
    for note in rep["notes"]:
        print(f"  note: {note}")
    loader = rep["loaded_by"].get("loader")
    if loader:
        print(f"  loaded back with {loader}")
    for line in format_check(rep):
        print(line)
    out = Path(rep["artifact"]).parents[1 if rep["format"] == "triton" else 0]
    print(f"  wrote preprocess.json and export.json in {out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from kiln.errors import DataError
    from kiln.export.predict import format_results, load_any, predict

    add_project_path(None)
    loaded = load_any(args.model, trust=args.trust)
    results = predict(loaded, args.inputs, args.topk, args.batch_size)
    print(format_results(results, args.format, args.topk))
    ok = sum("top" in r for r in results)
    if ok == 0:
        raise DataError(f"no image could be read ({len(results)} input(s) failed, see above)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="export a checkpoint (TorchScript, torch.export, ONNX, Triton, safetensors) and verify it",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, help="a kiln checkpoint (e.g. runs/x/checkpoints/best.pt)")
    e.add_argument("--format", required=True, choices=FORMATS, help="what to write (see above)")
    e.add_argument(
        "--out", help="output folder (default: <run dir>/export-<format>); for triton the repository"
    )
    e.add_argument("--name", help="file stem (default: model); for triton the model name (default: run.name)")
    e.add_argument("--max-batch-size", type=int, default=64, metavar="N",
                   help="largest batch verified; Triton's max_batch_size (default: 64)")  # fmt: skip
    e.add_argument("--method", choices=["trace", "script"], default="trace",
                   help="TorchScript: trace (default) or script; see above for when to choose which")  # fmt: skip
    e.add_argument("--backend", choices=["torchscript", "onnx"], default="torchscript",
                   help="triton: the model file inside the repository (default: torchscript)")  # fmt: skip
    e.add_argument("--instance-kind", choices=["auto", "gpu", "cpu"], default="auto",
                   help="triton: instance_group kind (auto: GPU when the server has one)")  # fmt: skip
    e.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help=f"max abs logit difference allowed (default: {TOLERANCE:g}, fp32)")  # fmt: skip
    e.add_argument("--allow-tracer-warnings", action="store_true",
                   help="trace even when PyTorch warns the trace depends on tensor values")  # fmt: skip
    e.add_argument("-c", "--config", help="use this config instead of the one stored in the checkpoint")
    e.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. data.root=/other/copy (data is used for verification)")  # fmt: skip
    e.set_defaults(func=run_export)

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
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--trust", action="store_true",
                   help="allow loading .pt2 files (torch.export.load unpickles; only for files you trust)")  # fmt: skip
    p.set_defaults(func=run_predict)
