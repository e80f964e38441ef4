"""`kiln check-data -c CONFIG`: every data check, over the whole dataset, without training. Prints counts
per class and split and every bad file or row (file and row named); exit 1 when anything is wrong."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from kiln.config import load_config
    from kiln.data.check import check

    report = check(load_config(args.config, args.overrides))
    print(report.text)
    return 1 if report.problems else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "check-data", help="check a dataset (bad files, bad CSV rows, class counts) without training"
    )
    c.add_argument("-c", "--config", required=True)
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=run)
