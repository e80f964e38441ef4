"""`kiln train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_train(args: argparse.Namespace) -> int:
    from kiln.config import load_config
    from kiln.engine.trainer import fit

    # the config's folder first on sys.path: a project's own modules (imports:, "module:name") are found
    # from wherever kiln is run
    sys.path.insert(0, str(Path(args.config).resolve().parent))
    cfg = load_config(args.config, args.overrides)
    summary = fit(cfg, resume=args.resume)
    if "test" in summary:
        print(f"test accuracy: {summary['test']['accuracy']:.4f}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a model from a config file",
        description="Train from CONFIG (YAML or JSON); key=value overrides change any value, "
        "e.g. trainer.epochs=3 optimizer.lr=0.01 run.dir=/tmp/r1",
    )
    t.add_argument("-c", "--config", required=True, help="config file (.yaml/.yml/.json)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.add_argument(
        "--resume", metavar="PATH", help="continue from this checkpoint (e.g. runs/x/checkpoints/last.pt)"
    )
    t.set_defaults(func=run_train)
