"""`kiln eval`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from kiln.evaluation.run import evaluate_checkpoint
    from kiln.registry import add_project_path

    add_project_path(args.config)  # a project's own modules (imports:): beside its config or in the cwd
    rep = evaluate_checkpoint(args.checkpoint, args.split, args.out, args.overrides, args.config, args.topk)
    print(f"{rep['split']}: {headline(rep)} on {rep['num_samples']:,} images ({rep['seconds']:.1f} s)")
    print(
        f"report: {rep['report_html']}  (and report.json, predictions.csv, mistakes.csv, PNGs in "
        f"{rep['out_dir']})"
    )
    return 0


def headline(rep: dict) -> str:
    """The report's main figures in one line: multi-label reports have no accuracy or ECE, but mAP."""
    if "map_macro" in rep:
        return (
            f"mAP {rep['map_macro']:.4f}, macro F1 {rep['macro']['f1']:.4f} at the tuned thresholds, "
            f"subset accuracy {rep['subset_accuracy']:.4f}, loss {rep['loss']:.4f}"
        )
    top5 = f", top-5 {rep['top5_accuracy']:.4f}" if "top5_accuracy" in rep else ""
    return (
        f"accuracy {rep['accuracy']:.4f}{top5}, macro F1 {rep['macro']['f1']:.4f}, loss {rep['loss']:.4f}, "
        f"ECE {rep['ece']:.4f}"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: metrics, plots and an HTML report",
        description="Rebuild model and data from a checkpoint's stored config (key=value overrides allowed, "
        "e.g. data.root=/other/copy), run inference once and write report.json, predictions.csv, "
        "PNG plots and report.html into --out (default: <run dir>/eval-<split>/).",
    )
    e.add_argument("--checkpoint", required=True, help="a kiln checkpoint (e.g. runs/x/checkpoints/best.pt)")
    e.add_argument("-c", "--config", help="use this config instead of the one stored in the checkpoint")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--out", help="output folder")
    e.add_argument("--topk", type=int, default=5, help="top-k columns in predictions.csv")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    e.set_defaults(func=run)
