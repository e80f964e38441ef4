"""`kiln cache ls|clear`: what the decode cache holds, and freeing it."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import datetime
    from pathlib import Path

    from kiln.data.cache import clear, entries

    folder = Path(args.dir).expanduser()
    if args.config:
        from kiln.config import load_config

        folder = Path(load_config(args.config).data.cache_dir).expanduser()
    if not folder.is_dir():
        print(f"{folder}: no cache yet")
        return 0
    if args.action == "clear":
        n, freed = clear(folder, args.older_than)
        print(f"removed {n} entries ({freed / 2**20:,.1f} MiB) from {folder}")
        return 0
    rows = entries(folder)
    print(f"{folder}: {len(rows)} entries, {sum(e['bytes'] for e in rows) / 2**20:,.1f} MiB")
    for e in rows:
        used = datetime.datetime.fromtimestamp(e["last_used"]).strftime("%Y-%m-%d %H:%M")
        shape = "x".join(map(str, e["shape"])) if e["shape"] else "?"
        print(
            f"  {e['key'][:12]}  {e['bytes'] / 2**20:9,.1f} MiB  last used {used}  {shape:>18}  {e['root']}"
        )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "cache",
        help="list or clear the decoded-image cache",
        description="The decode cache keeps each dataset's decoded images (data.cache_dir, default "
        "~/.cache/kiln). ls: sizes, dataset roots, last use; clear: remove entries (not used for "
        "--older-than DAYS) and the temp files of killed writers; entries being built are kept.",
    )
    c.add_argument("action", choices=["ls", "clear"])
    c.add_argument("--dir", default="~/.cache/kiln", help="the cache folder (default: ~/.cache/kiln)")
    c.add_argument("-c", "--config", help="use this config's data.cache_dir")
    c.add_argument(
        "--older-than", type=float, metavar="DAYS", help="clear: only entries unused for this long"
    )
    c.set_defaults(func=run)
