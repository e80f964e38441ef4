"""`kiln cache ls|clear`: sizes, dataset roots and last use; clearing by age, and a dead writer's temp
files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kiln.cli import main
from kiln.data.cache import entries, load_images
from kiln.spec import ImageSpec
from tests.conftest import write_png_folder


def test_ls_and_clear_older_than(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        root = write_png_folder(tmp_path / name, ["x", "y"], per_class=4, size=8, splits=("train",))
        load_images(sorted(root.rglob("*.png")), ImageSpec(3, (8, 8)), False, cache, workers=1)
    (cache / ".images-dead.npy.tmp-999999").write_bytes(b"half")  # a writer killed mid-write (no such pid)
    assert main(["cache", "ls", "--dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out
    assert str(tmp_path / "a" / "train") in out
    assert "MiB" in out
    old = next(e for e in entries(cache) if e["root"].startswith(str(tmp_path / "a")))
    meta = cache / f"meta-{old['key']}.json"
    os.utime(meta, (time.time() - 10 * 86400,) * 2)  # last used ten days ago
    assert main(["cache", "clear", "--dir", str(cache), "--older-than", "7"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert [e["root"] for e in entries(cache)] == [str(tmp_path / "b" / "train")]
    assert not list(cache.glob(".*.tmp-*"))
    assert main(["cache", "clear", "--dir", str(cache)]) == 0
    assert entries(cache) == []
