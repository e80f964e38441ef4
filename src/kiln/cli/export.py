"""`kiln export` (argument parsing only; torch and friends are imported in the handler)."""

from __future__ import annotations

import argparse
from typing import Any

from kiln.export import TOLERANCE

EXPORT_DESCRIPTION = """\
Write a checkpoint as a deployable artifact, load it back, and check it against the eager model on real
images from the checkpoint's data (a real batch, batch 1, batch --max-batch-size, and the same images
inverted) to a max abs logit difference of --tolerance. The report is printed and saved as export.json;
preprocess.json (input size, channel order, mean/std, 0-255 -> 0-1 scale, class names) is written beside
the model. A failed check exits with status 4.

formats (--format; kiln registers each with kiln.registry.register_format):
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
               platform onnxruntime_onnx), or --backend python: 1/model.py running the kiln artifact
               (--artifact torchscript|onnx) with the preprocessing inside the server, inputs IMAGE (encoded
               image files, BYTES) or INPUT (ready tensors), output LOGITS with labels.txt (display names,
               for Triton's classification extension); multi-label models add LABELS (JSON per image: the
               classes at or above their threshold) and thresholds.txt, which the libtorch and onnxruntime
               backends leave to the client. config.pbtxt is parsed as Triton's ModelConfig and cross-checked.
               Serve with: kiln serve --repository OUT (the Triton server of the nvidia-pytriton wheel,
               python backend) or NGC's tritonserver --model-repository=OUT
  safetensors  model.safetensors (tensors only, nothing can execute on load) + model.json (model name and
               args, classes and display names, multi-label thresholds, preprocessing): the safe format
               to share; kiln rebuilds the model from it.
"""


def export_options(args: argparse.Namespace) -> Any:
    """The ExportOptions the arguments ask for (its TritonOptions from the --format triton group)."""
    from kiln.export.base import ExportOptions, TritonOptions

    triton = TritonOptions(
        backend=args.backend,
        artifact=args.artifact,
        instance_kind=args.instance_kind,
        instances=args.instances,
        dynamic_batching=args.dynamic_batching,
        queue_delay_us=args.queue_delay_us,
        execution_env=args.execution_env,
    )
    return ExportOptions(
        name=args.name,
        max_batch_size=args.max_batch_size,
        method=args.method,
        allow_tracer_warnings=args.allow_tracer_warnings,
        triton=triton,
    )


def run(args: argparse.Namespace) -> int:
    from kiln.export.formats import get_format
    from kiln.export.run import export_checkpoint
    from kiln.export.verify import format_check
    from kiln.registry import add_project_path

    add_project_path(args.config)
    get_format(args.format)  # an unknown --format: one line with the closest registered name
    report = export_checkpoint(
        args.checkpoint,
        args.format,
        args.out,
        overrides=args.overrides,
        config=args.config,
        tolerance=args.tolerance,
        opts=export_options(args),
    )
    how = f" ({report['variant']})" if report["variant"] else ""
    print(
        f"kiln: exported {report['model']} as {report['format']}{how} -> {report['artifact']} "
        f"({report['size_bytes'] / 1024:,.0f} KiB)"
    )
    for note in report["notes"]:
        print(f"  note: {note}")
    loader = report["loaded_by"].get("loader")
    if loader:
        print(f"  loaded back with {loader}")
    for line in format_check(report):
        print(line)
    print(f"  wrote preprocess.json and export.json in {report['folder']}")
    return 0


def _add_triton_arguments(group: argparse._ArgumentGroup) -> None:
    """The options of --format triton only (and of kiln serve's repository)."""
    group.add_argument(
        "--backend",
        choices=["torchscript", "onnx", "python"],
        default="torchscript",
        help="triton: libtorch, onnxruntime or the python backend (default: torchscript)",
    )
    group.add_argument(
        "--artifact",
        choices=["torchscript", "onnx"],
        default="torchscript",
        help="triton --backend python: the artifact model.py runs (default: torchscript)",
    )
    group.add_argument(
        "--instance-kind",
        choices=["auto", "gpu", "cpu"],
        default="auto",
        help="triton: instance_group kind (auto: GPU when the server has one)",
    )
    group.add_argument("--instances", type=int, default=1, help="triton: model instances (default: 1)")
    group.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        help="triton: answer each request alone (default: Triton groups concurrent requests)",
    )
    group.add_argument(
        "--queue-delay-us",
        type=int,
        default=500,
        help="triton: how long dynamic batching waits for more requests (default: 500 us)",
    )
    group.add_argument(
        "--execution-env",
        metavar="DIR",
        help="triton --backend python: EXECUTION_ENV_PATH, a Python env with numpy<2 and kiln",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint (TorchScript, torch.export, ONNX, Triton, safetensors) and verify it",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a kiln checkpoint (e.g. runs/x/checkpoints/best.pt)"
    )
    # no choices=: the names live in the registry, which needs torch to fill; run() checks the name
    parser.add_argument("--format", required=True, metavar="FORMAT", help="what to write (see formats above)")
    parser.add_argument(
        "--out", help="output folder (default: <run dir>/export-<format>); for triton the repository"
    )
    parser.add_argument(
        "--name", help="file stem (default: model); for triton the model name (default: run.name)"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=64,
        metavar="N",
        help="largest batch verified; Triton's max_batch_size (default: 64)",
    )
    parser.add_argument(
        "--method",
        choices=["trace", "script"],
        default="trace",
        help="TorchScript: trace (default) or script; see above for when to choose which",
    )
    _add_triton_arguments(parser.add_argument_group("--format triton"))
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"max abs logit difference allowed (default: {TOLERANCE:g}, fp32)",
    )
    parser.add_argument(
        "--allow-tracer-warnings",
        action="store_true",
        help="trace even when PyTorch warns the trace depends on tensor values",
    )
    parser.add_argument("-c", "--config", help="use this config instead of the one stored in the checkpoint")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. data.root=/other/copy (data is used for verification)",
    )
    parser.set_defaults(func=run)
