"""The `kiln` command. Each command module parses its arguments, calls one library function and prints
what it returned; errors the user can fix are printed as one line (no traceback) with a non-zero exit
code.

One module per command, each with ``add_parser(subparsers)`` and a handler that imports the library only
when it runs, so `kiln --help` and `kiln <command> --help` import no torch.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import NoReturn

from kiln import signals
from kiln._version import __version__
from kiln.cli import audit, cache, check_data, evaluate, export, lr_find, new, predict, serve, train, tune
from kiln.errors import KilnError

COMMANDS = (train, lr_find, evaluate, export, predict, serve, tune, new, check_data, audit, cache)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln", description="Train, evaluate, export and tune image classifiers."
    )
    p.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
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
        # one handler for SIGINT, SIGTERM and SIGUSR1 around every command (see kiln/signals.py)
        with signals.install():
            return int(args.func(args) or 0)
    except KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a signal in a phase with nothing to save: what was finished is kept
        print(
            f"kiln: interrupted ({signals.received_name()}); finished work (checkpoints, cached images and "
            "features) is kept",
            file=sys.stderr,
        )
        return signals.exit_code()


def run() -> NoReturn:
    """The `kiln` command: `main`, then an exit that does not wait for the interpreter's last garbage
    collection. Measured on 2 cores: that collection, over torch's and timm's objects, takes 1.4 s, longer
    than stopping a feature pass on SIGTERM. Files are closed and flushed explicitly and `atexit` still
    runs; only objects in reference cycles go uncollected, as the operating system frees them anyway."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
