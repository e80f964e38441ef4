"""The `kiln` command. It only parses arguments and calls the library; errors the user can fix are
printed as one line (no traceback) with a non-zero exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kiln.errors import KilnError


def _train(args: argparse.Namespace) -> int:
    from kiln.config import load_config
    from kiln.engine.trainer import fit

    cfg = load_config(args.config, args.overrides)
    summary = fit(cfg, resume=args.resume)
    if "test" in summary:
        print(f"test accuracy: {summary['test']['accuracy']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln", description="Train, evaluate, export and tune image classifiers."
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model from a config file",
                       description="Train from CONFIG (YAML or JSON); key=value overrides change any value, "
                                   "e.g. trainer.epochs=3 optimizer.lr=0.01 run.dir=/tmp/r1")  # fmt: skip
    t.add_argument("-c", "--config", required=True, help="config file (.yaml/.yml/.json)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.add_argument(
        "--resume", metavar="PATH", help="continue from this checkpoint (e.g. runs/x/checkpoints/last.pt)"
    )
    t.set_defaults(func=_train)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
