"""`kiln check-data -c CONFIG`: every data check, over the whole dataset, without training. Prints counts
per class and split and every bad file or row (file and row named); exit 1 when anything is wrong."""

from __future__ import annotations

import argparse
import collections
from typing import Any


def _labels(split: Any) -> list[int]:
    from kiln.data.splits import FileSet, ImageSet

    if isinstance(split, FileSet):
        return list(split.labels)
    if isinstance(split, ImageSet):
        return split.labels.tolist()
    return [int(split[i][1]) for i in range(len(split))]


def check(cfg_path: str, overrides: list[str]) -> tuple[str, int]:
    # imported here: `kiln --help` must not pay for torch
    from kiln.config import load_config
    from kiln.data import _shape, default_workers
    from kiln.data.decode import scan_files
    from kiln.data.sources import list_source
    from kiln.data.splits import FileSet

    cfg = load_config(cfg_path, [*overrides, "data.on_bad_sample=skip"])  # collect problems, don't stop
    raw = list_source(cfg.data)
    problems = list(raw.skipped)
    shape = _shape(cfg.data, raw)
    lines = [f"classes ({len(raw.classes)}): {', '.join(raw.classes[:30])}{' ...' if len(raw.classes) > 30 else ''}",
             f"images: {shape[0]} channel(s), {shape[1][0]}x{shape[1][1]}{' (resized)' if shape[2] else ''}"]  # fmt: skip
    header = ["split", "images", *raw.classes[:12], *(["..."] if len(raw.classes) > 12 else [])]
    rows = [header]
    for name, split in (("train", raw.train), ("val", raw.val), ("test", raw.test)):
        if split is None:
            continue
        if isinstance(split, FileSet):
            problems += [msg for _, msg in scan_files(split.paths, *shape, default_workers(cfg.data))]
        counts = collections.Counter(_labels(split))
        rows.append(
            [name, str(len(split)), *[str(counts.get(i, 0)) for i in range(min(12, len(raw.classes)))]]
        )
        empty = [c for i, c in enumerate(raw.classes) if counts.get(i, 0) == 0]
        if empty and name == "train":
            problems.append(f"{name}: classes with no images: {empty}")
    if len(raw.train) < cfg.data.batch_size:
        problems.append(f"train: {len(raw.train)} images, fewer than one batch ({cfg.data.batch_size})")
    widths = [max(len(r[c]) if c < len(r) else 0 for r in rows) for c in range(len(header))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=False)) for r in rows]
    lines.append(f"problems: {len(problems)}" + "".join(f"\n  {p}" for p in problems))
    return "\n".join(lines), len(problems)


def run_check(args: argparse.Namespace) -> int:
    text, n = check(args.config, args.overrides)
    print(text)
    return 1 if n else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "check-data", help="check a dataset (bad files, bad CSV rows, class counts) without training"
    )
    c.add_argument("-c", "--config", required=True)
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=run_check)
