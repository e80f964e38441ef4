"""`kiln check-data -c CONFIG`: every data check, over the whole dataset, without training. Prints counts
per class and split and every bad file or row (file and row named); exit 1 when anything is wrong."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from kiln.config import load_config
    from kiln.data.check import check
    from kiln.engine.setup import data_preset
    from kiln.registry import add_project_path, import_user_modules

    add_project_path(args.config)
    cfg = load_config(args.config, args.overrides)
    import_user_modules(cfg.imports)
    # the geometry training will use: the pretrained weights' input size and crop, when the config has them
    report = check(cfg, data_preset(cfg))

    print(report.text)
    return 1 if report.problems else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "check-data", help="check a dataset (bad files, bad CSV rows, class counts) without training"
    )
    c.add_argument("-c", "--config", required=True)
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=run)
