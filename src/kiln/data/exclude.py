"""``data.exclude``: images left out of every split, by path (``kiln audit`` writes such lists: exclude.txt,
or a column of duplicates.csv / label_issues.csv / outliers.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

from kiln.console import log
from kiln.data.splits import FileSplit, RawSplits, Split
from kiln.errors import DataError


def read_paths(file: str) -> list[str]:
    """The paths a text file (one a line) or a CSV with a ``path`` column lists."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise DataError(
            f"data.exclude: {path} does not exist; give a text file of paths or a CSV with a path column"
        )
    text = path.read_text(errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    if path.suffix.lower() == ".csv" or first.split(",")[0].strip() == "path":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and "path" not in rows[0]:
            raise DataError(f"data.exclude: {path} has no `path` column (its columns: {', '.join(rows[0])})")
        return [r["path"].strip() for r in rows if r.get("path", "").strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def resolved(entries: list[str], base: Path) -> set[str]:
    """Each listed path as an absolute path, relative ones read from the cwd and from the list's folder."""
    out = set()
    for entry in entries:
        p = Path(entry).expanduser()
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, base / p]
        out.update(str(c.resolve()) for c in candidates)
    return out


def apply_exclude(raw: RawSplits, file: str | None) -> RawSplits:
    """``raw`` without the images ``file`` lists, with a line saying how many left each split."""
    if not file:
        return raw
    entries = read_paths(file)
    listed = resolved(entries, Path(file).expanduser().resolve().parent)
    counts, matched = {}, 0
    splits: dict[str, Split | None] = {}
    for name in ("train", "val", "test"):
        split = getattr(raw, name)
        if split is None:
            splits[name] = None
            continue
        if not isinstance(split, FileSplit):
            raise DataError(
                "data.exclude: this source's images have no file paths to leave out (folder and CSV sources "
                "have); remove data.exclude"
            )
        keep = [i for i, p in enumerate(split.paths) if str(Path(p).resolve()) not in listed]
        counts[name] = len(split) - len(keep)
        matched += counts[name]
        splits[name] = split.subset(keep) if counts[name] else split
    shown = ", ".join(f"{n:,} {name}" for name, n in counts.items())
    log(f"kiln: data.exclude ({file}): left out {shown} image(s) of the {len(entries):,} it lists")
    if matched < len(entries):
        log(f"kiln: data.exclude: {len(entries) - matched:,} listed path(s) match no image of the data")
    return RawSplits(splits["train"], splits["val"], splits["test"], raw.classes, raw.skipped, raw.notes)  # type: ignore[arg-type]
