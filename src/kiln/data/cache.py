"""The decode cache: a split's decoded images as one ``.npy`` file (and, for train photos, their extents),
memory-mapped on later runs, shared by every run, trial and DDP rank on the same data.

An entry cannot be torn, raced or silently wrong:

- the key is a fingerprint of the file list (path, size, mtime) and the decode settings;
- a builder holds ``<key>.lock`` (``flock``: the kernel releases it when the process dies, so a killed
  builder never blocks the next one); others wait for it, then use what it wrote instead of decoding again;
- each file is written to a temp file, fsynced and renamed; ``<key>.json`` (shapes, dtypes, CRC-32 of the
  bytes) is written last and marks the entry complete; temp files of dead writers are removed;
- a reader checks sizes, shapes, dtypes and the CRC-32 (about 25 ms per 150 MB, against ~0.15 s to load)
  and rebuilds a damaged or truncated entry with one warning;
- a read-only or full cache folder: the images are decoded into memory with one warning, and a partial
  file is never renamed into place, so no later run can trust it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.atomic import remove_stale_temps, write_atomic, write_with
from kiln.console import warn
from kiln.data.decode import decode_files
from kiln.data.spec import ImageSpec

CACHE_VERSION = 3  # 3: CRC-checked entries with a metadata file; 2: ImageSpec geometry


def fingerprint(paths: list[Path], spec: ImageSpec, train: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{spec}|{spec.stored(train)}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def crc(arr: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"))


class Entry:
    """The files of one cache entry."""

    def __init__(self, cache_dir: Path, key: str) -> None:
        self.dir, self.key = cache_dir, key
        self.images, self.extents = cache_dir / f"images-{key}.npy", cache_dir / f"extents-{key}.npy"
        self.meta, self.lock = cache_dir / f"meta-{key}.json", cache_dir / f"{key}.lock"

    def read(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """The entry, verified; None when there is none; raises ValueError naming what is wrong."""
        if not self.meta.is_file():
            return None
        meta = json.loads(self.meta.read_text())
        out = []
        for path, want, key in ((self.images, shape, "images"), (self.extents, (shape[0], 2), "extents")):
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise ValueError(f"{path.name} is unreadable ({e})") from None
            if (
                arr.shape != tuple(want)
                or str(arr.dtype) != meta[key]["dtype"]
                or crc(arr) != meta[key]["crc32"]
            ):
                raise ValueError(f"{path.name} does not match its checksum (damaged or truncated)")
            out.append(arr)
        with contextlib.suppress(OSError):  # last use, for `kiln cache ls/clear`; a read-only folder keeps it
            os.utime(self.meta)
        return out[0], out[1]

    def write(self, arr: np.ndarray, ext: np.ndarray, about: dict[str, Any]) -> None:
        for data, target in ((arr, self.images), (ext, self.extents)):
            write_with(target, lambda f, d=data: np.save(f, d))
        meta = {
            "version": CACHE_VERSION,
            "key": self.key,
            "created": time.time(),
            **about,
            "images": {"dtype": str(arr.dtype), "shape": list(arr.shape), "crc32": crc(arr)},
            "extents": {"dtype": str(ext.dtype), "shape": list(ext.shape), "crc32": crc(ext)},
        }
        write_atomic(self.meta, json.dumps(meta, indent=1))  # last: the entry is complete

    def remove(self) -> None:
        for p in (self.meta, self.images, self.extents):
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(entry: Entry) -> Iterator[None]:
    entry.dir.mkdir(parents=True, exist_ok=True)
    with open(entry.lock, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # another builder of this key: wait for it, then use its entry
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def load_images(
    paths: list[Path], spec: ImageSpec, train: bool, cache_dir: Path | None, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded images (uint8 ``[N, C, H, W]``) and the (h, w) each fills, from the cache when it holds
    them (verified), else decoded in parallel and cached."""
    shape = (len(paths), spec.channels, *spec.stored(train))
    if cache_dir is None:
        return _tensors(*decode_files(paths, spec, train, workers))
    entry = Entry(cache_dir, fingerprint(paths, spec, train))
    found = _read(entry, shape)
    if found is not None:
        return _tensors(*found)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(entry))
        except OSError as e:  # a read-only folder (or one we may not write)
            _no_cache(cache_dir, e)
            return _tensors(*decode_files(paths, spec, train, workers))
        found = _read(entry, shape)  # built meanwhile by the process we waited for
        if found is not None:
            return _tensors(*found)
        remove_stale_temps(cache_dir)
        arr, ext = decode_files(paths, spec, train, workers)
        root = os.path.commonpath([str(p.parent) for p in paths]) if paths else ""
        try:
            entry.write(arr, ext, {"root": root, "files": len(paths), "spec": str(spec), "train": train})
        except OSError as e:  # a full disk: nothing partial was renamed into place
            _no_cache(cache_dir, e)
        return _tensors(arr, ext)
    raise AssertionError("unreachable")


def _no_cache(cache_dir: Path, e: OSError) -> None:
    """A read-only, full or size-limited folder (numpy reports a short write without an errno)."""
    if e.errno is not None and e.errno not in (
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
    ):
        raise e
    warn(
        f"cannot use the image cache in {cache_dir} ({e.strerror or e}); decoding into memory this run "
        "(set data.cache_dir to a writable folder with room for the decoded images)"
    )


def _read(entry: Entry, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return entry.read(shape)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        warn(f"the image cache entry {entry.meta.name} in {entry.dir} is damaged ({e}); rebuilding it")
        with contextlib.suppress(OSError):
            entry.remove()
        return None


def _tensors(arr: np.ndarray, ext: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    import warnings

    with warnings.catch_warnings():  # a read-only memory map: kiln never writes into it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr), torch.from_numpy(np.array(ext))


def entries(cache_dir: Path) -> list[dict[str, Any]]:
    """What the cache holds, newest use first: key, size, dataset root, images, last use (or damaged)."""
    out = []
    for meta in sorted(cache_dir.glob("meta-*.json")):
        entry = Entry(cache_dir, meta.stem.removeprefix("meta-"))
        size = sum(p.stat().st_size for p in (entry.images, entry.extents, entry.meta) if p.is_file())
        try:
            about = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            about = {"root": "(damaged entry)"}
        out.append(
            {
                "key": entry.key,
                "bytes": size,
                "root": about.get("root", ""),
                "files": about.get("files"),
                "shape": about.get("images", {}).get("shape"),
                "last_used": meta.stat().st_mtime,
                "created": about.get("created"),
            }
        )
    orphans = {p for p in cache_dir.glob("images-*.npy")} - {Entry(cache_dir, e["key"]).images for e in out}
    out += [
        {
            "key": p.stem.removeprefix("images-"),
            "bytes": p.stat().st_size,
            "root": "(incomplete: no metadata)",
            "files": None,
            "shape": None,
            "last_used": p.stat().st_mtime,
            "created": None,
        }
        for p in orphans
    ]
    return sorted(out, key=lambda e: -e["last_used"])


def clear(cache_dir: Path, older_than_days: float | None = None) -> tuple[int, int]:
    """Remove entries not used for ``older_than_days`` (all when None) and dead writers' temp files; an
    entry being built (its lock held) is left alone. Returns (entries removed, bytes freed)."""
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else float("inf")
    removed = freed = 0
    for e in entries(cache_dir):
        if e["last_used"] > cutoff:
            continue
        entry = Entry(cache_dir, e["key"])
        with open(entry.lock, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a process is building it right now
            entry.remove()
            removed, freed = removed + 1, freed + e["bytes"]
        entry.lock.unlink(missing_ok=True)
    remove_stale_temps(cache_dir)
    return removed, freed
