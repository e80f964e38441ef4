"""The ``csv`` source: an image directory plus annotation files (``train.csv``, optional ``val.csv`` and
``test.csv``), one row per image. The label of a row is

- one class (an int, or a name): single-label;
- with ``data.csv.multi_label: true``, several class names in one cell split on ``data.csv.label_separator``
  (default a space; an empty cell: no label): multi-label, the classes are the names seen in train;
- with ``data.csv.label_column`` a list of columns, one 0/1 column per class: multi-label, the classes are
  those columns in that order.

Every bad row is an error naming ``file.csv:row``, or with ``data.on_bad_sample: skip`` left out and listed.
A multi-label sample's label is a tuple of class indices (possibly empty).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from kiln.config import DataConfig
from kiln.data.splits import FileSplit, RawSplits
from kiln.errors import DataError

Label = int | tuple[int, ...]
TRUE, FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no", ""}


class Rows:
    """The rows of one annotation file: files, raw labels (a cell, or the set of 1-columns), where."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.cells: list[str | tuple[str, ...]] = []
        self.where: list[str] = []


def _bad(cfg: DataConfig, skipped: list[str], msg: str) -> None:
    if cfg.on_bad_sample != "skip":
        raise DataError(msg + " (or set data.on_bad_sample=skip to leave such rows out)")
    skipped.append(msg)


def _label_cell(row: dict[str, str], cfg: DataConfig, where: str) -> str | tuple[str, ...]:
    columns = cfg.csv.label_column
    if isinstance(columns, str):
        cell = (row[columns] or "").strip()
        if not cfg.csv.multi_label:
            return cell
        return tuple(dict.fromkeys(p.strip() for p in cell.split(cfg.csv.label_separator) if p.strip()))
    chosen = []
    for column in columns:  # one 0/1 column per class
        value = (row[column] or "").strip().lower()
        if value not in TRUE | FALSE:
            raise ValueError(
                f"{where}: column {column!r} holds {value[:40]!r}; one-hot label columns take 0 or 1"
            )
        if value in TRUE:
            chosen.append(column)
    return tuple(chosen)


def read_rows(path: Path, cfg: DataConfig, root: Path, skipped: list[str]) -> Rows:
    """The rows of ``path``: refuses (or skips) paths outside the root, missing files, duplicates."""
    col_path = cfg.csv.path_column
    label_columns = [cfg.csv.label_column] if isinstance(cfg.csv.label_column, str) else cfg.csv.label_column
    rows, first_row = Rows(), {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (col_path, *label_columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: no column {missing[:10]} (columns: {(reader.fieldnames or [])[:20]}); "
                "set data.csv.path_column / data.csv.label_column"
            )
        base = os.path.abspath(root)
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            where = f"{path}:{row_no}"
            if None in row:  # DictReader keeps the fields past the header's under None
                extra = ",".join(row[None])[:80]  # type: ignore[index]
                _bad(
                    cfg,
                    skipped,
                    f"{where}: more fields than the header's {len(reader.fieldnames or [])} (extra: "
                    f"{extra!r}); a comma inside a file name or label needs quotes",
                )
                continue
            rel = (row[col_path] or "").strip()
            # normpath, not resolve(): string work only, ~10x faster over 60k rows; ".." is still caught
            file = os.path.normpath(os.path.join(base, rel))
            if not rel or not file.startswith(base + os.sep):
                _bad(
                    cfg,
                    skipped,
                    f"{where}: path '{rel[:200]}' is empty or outside the data root {root}; refused",
                )
                continue
            if not os.path.isfile(file):
                _bad(cfg, skipped, f"{where}: image file not found: {root / rel[:200]}")
                continue
            if file in first_row:
                _bad(cfg, skipped, f"{where}: duplicate of row {first_row[file]} ({rel[:200]})")
                continue
            try:
                cell = _label_cell(row, cfg, where)
            except ValueError as e:
                _bad(cfg, skipped, str(e))
                continue
            first_row[file] = row_no
            rows.paths.append(Path(file))
            rows.cells.append(cell)
            rows.where.append(where)
    if not rows.paths:
        raise DataError(f"{path}: no rows")
    return rows


def classes_of(train: Rows, cfg: DataConfig) -> tuple[list[str], bool]:
    """The class names in label order, and whether the train labels are all integers."""
    if isinstance(cfg.csv.label_column, list):
        return list(cfg.csv.label_column), False
    if cfg.csv.multi_label:
        return sorted({name for cell in train.cells for name in cell}), False
    labels = [str(c) for c in train.cells]
    numeric = all(s.lstrip("-").isdigit() for s in labels)
    if numeric:
        return [str(i) for i in range(max(int(s) for s in labels) + 1)], True
    return sorted(set(labels)), False


def labelled(rows: Rows, classes: list[str], numeric: bool, cfg: DataConfig, skipped: list[str]) -> FileSplit:
    """The split with each row's label as class indices; a name not among the train classes is a bad row."""
    index = {c: i for i, c in enumerate(classes)}
    keep: list[int] = []
    labels: list[Label] = []
    for i, (cell, where) in enumerate(zip(rows.cells, rows.where, strict=True)):
        names = (
            cell
            if isinstance(cell, tuple)
            else (str(int(cell)) if numeric and cell.lstrip("-").isdigit() else cell,)
        )
        unknown = [n for n in names if n not in index]
        if unknown:
            _bad(
                cfg,
                skipped,
                f"{where}: label '{unknown[0][:100]}' is not one of the {len(classes)} train classes "
                f"{classes[:20]}",
            )
            continue
        keep.append(i)
        labels.append(tuple(index[n] for n in names) if isinstance(cell, tuple) else index[names[0]])
    multi = len(classes) if cfg.csv.multi else None
    paths, where = [rows.paths[i] for i in keep], [rows.where[i] for i in keep]
    return FileSplit(paths, labels, where, multi)  # type: ignore[arg-type]


def csv_source(cfg: DataConfig, root: Path) -> RawSplits:
    """An image directory plus CSV annotations (see the module)."""
    files: dict[str, Rows] = {}
    skipped: list[str] = []
    for split, name in (("train", cfg.csv.train), ("val", cfg.csv.val), ("test", cfg.csv.test)):
        if name is None:
            continue
        path = root / name
        if not path.is_file():
            if split == "train":
                raise DataError(f"data.csv.train: annotation file not found: {path}")
            continue
        files[split] = read_rows(path, cfg, root, skipped)
    classes, numeric = classes_of(files["train"], cfg)
    if not classes:
        raise DataError(
            f"{root / cfg.csv.train}: no row names a class (with data.csv.multi_label, the cells "
            f"hold class names separated by {cfg.csv.label_separator!r})"
        )
    out = {split: labelled(rows, classes, numeric, cfg, skipped) for split, rows in files.items()}
    return RawSplits(out["train"], out.get("val"), out.get("test"), classes, skipped)
