"""Class names for class ids (``data.class_names``): folders and CSV labels are often ids (WordNet ids,
product codes); reports, ``kiln predict``, exports and ``kiln serve`` show the names instead.

The mapping is a config mapping ``{id: name}``, or a file:

- ``.csv``: rows ``id,name`` (a header row is skipped);
- any other file: lines ``ID NAME`` (split at the first whitespace, as ImageNet's ``synset_words.txt``:
  ``n01440764 tench, Tinca tinca``), or one name per line in label order when no line starts with an id.

Blank lines and lines starting with ``#`` are skipped. A class the mapping leaves out keeps its id.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from kiln.console import log
from kiln.errors import DataError

MAX_BYTES = 16 * 2**20
KEY = "data.class_names"


def _text(path: Path) -> str:
    if not path.is_file():
        raise DataError(
            f"{KEY}: {path} is {'a folder' if path.is_dir() else 'not found'}; give a .txt or .csv file"
        )
    if path.stat().st_size > MAX_BYTES:
        raise DataError(f"{KEY}: {path} is larger than {MAX_BYTES // 2**20} MiB; is it the right file?")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{KEY}: {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _pairs(path: Path, text: str, ids: set[str]) -> list[tuple[int, str, str]]:
    """(line, first field, rest) of every non-blank line."""
    out = []
    if path.suffix.lower() == ".csv":
        for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if line_no == 1 and row[0].strip() not in ids and len(row) >= 2:
                continue  # a header row
            out.append((line_no, row[0].strip(), ",".join(row[1:]).strip()))
        return out
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            first, _, rest = line.partition(" ") if "\t" not in line else line.partition("\t")
            out.append((line_no, first.strip(), rest.strip()))
    return out


def read_class_names(source: str | dict[str, str], classes: list[str]) -> list[str]:
    """Display names in label order for ``classes`` (ids), from a mapping or a file (see the module)."""
    if isinstance(source, dict):
        mapping = {str(k): str(v) for k, v in source.items()}
        where = KEY
    else:
        path = Path(source).expanduser()
        text = _text(path)
        rows = _pairs(path, text, set(classes))
        where = str(path)
        if rows and not any(first in classes for _, first, _ in rows):
            if len(rows) != len(classes):
                raise DataError(
                    f"{KEY}: {path}: no line starts with a class id (e.g. {classes[0]!r}), and it has "
                    f"{len(rows)} names for {len(classes)} classes; write lines 'ID NAME'"
                )
            # one name per line, in label order
            return [" ".join(filter(None, (first, rest)))[:200] for _, first, rest in rows]
        mapping = {}
        for line_no, first, rest in rows:
            if not rest:
                raise DataError(
                    f"{KEY}: {path}:{line_no}: {first[:60]!r} has no name after it; lines are 'ID NAME'"
                )
            mapping[first] = rest
    names = [mapping.get(c, c)[:200] for c in classes]
    missing = [c for c in classes if c not in mapping]
    if missing:
        log(
            f"kiln: {where} names no class {missing[:5]}{' ...' if len(missing) > 5 else ''}; their ids "
            "are shown"
        )
    return names
