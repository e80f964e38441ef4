"""The `kiln` command. It only parses arguments and calls the library; errors the user can fix are
printed as one line (no traceback) with a non-zero exit code.

Each command lives beside the code it drives and adds its own sub-parser through ``add_parser(sub)``;
those modules import nothing heavy at import time, so `kiln --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kiln.errors import KilnError

# module -> the commands it adds (each module has add_parser(subparsers))
COMMAND_MODULES = [
    "kiln.engine.command", "kiln.evaluation.command", "kiln.export.command", "kiln.scaffold.command",
    "kiln.tuning.command",
    "kiln.data.check",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln", description="Train, evaluate, export and tune image classifiers."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (e.name and name.startswith(e.name)):  # a missing dependency inside it is a real error
                raise
            continue
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`kiln train -c x --resume auto a.b=1`)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in a or a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
