"""`kiln audit`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from kiln.config import load_config
    from kiln.evaluation.audit import audit
    from kiln.registry import add_project_path

    add_project_path(args.config)
    overrides = [*args.overrides, *([f"model.pretrained={args.checkpoint}"] if args.checkpoint else [])]
    cfg = load_config(args.config, overrides)
    found = audit(cfg, args.out, args.config)
    held = ", ".join(f"{n:,} {split}" for split, n in found["held_out_with_twin_in_train"].items())
    print(
        f"near twins across splits: {found['leaks']:,} pairs ({held or 'no held-out split'} image(s) with a "
        f"twin in train); within splits: {found['duplicate_pairs_within_splits']:,} pairs"
    )
    print(f"likely label errors: {found['label_issues']:,}; outliers: {found['outliers']:,}")
    print(f"report: {found['out_dir']}/audit.html  (and duplicates.csv, label_issues.csv, outliers.csv)")
    if found["command"]:
        print(f"to train without them: {found['command']}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="find near duplicates, leaks between splits, likely label errors and outliers",
        description="Compute (or read from the cache) the backbone features of every split, as the frozen "
        "recipe of CONFIG does, and find: near-duplicate images within and across splits (a val or test "
        "image with a twin in train is a leak), likely label errors (confident learning on k-fold linear "
        "heads), and outliers (far from every train image). Writes audit.html, duplicates.csv, "
        "label_issues.csv, outliers.csv and exclude.txt into --out (default: <run dir>/audit/); "
        "data.exclude=exclude.txt leaves those images out of a later run.",
    )
    p.add_argument("-c", "--config", required=True, help="config file (.yaml/.yml/.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--out", help="output folder (default: <run dir>/audit)")
    p.add_argument(
        "--checkpoint",
        help="a trained run's backbone (a kiln checkpoint) instead of the config's pretrained weights",
    )
    p.set_defaults(func=run)
