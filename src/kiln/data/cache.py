"""The cache: named arrays under a content key, as ``.npy`` files memory-mapped on later runs, shared by every
run, tune trial and DDP rank. It holds a split's decoded images (``images``, ``extents``: the decode cache)
and a frozen backbone's features (``features``: ``engine/features.py``).

An entry cannot be torn, raced or silently wrong:

- the key is a hash of what the arrays are made from (for images: the file list with sizes and mtimes and
  the decode settings; for features: the weights, the images and the view);
- a builder holds ``<key>.lock`` (``flock``: the kernel releases it when the process dies, so a killed
  builder never blocks the next one); others wait for it, then use what it wrote instead of computing again;
- each file is written to a temp file, fsynced and renamed; ``meta-<key>.json`` (shapes, dtypes, CRC-32 of
  the bytes) is written last and marks the entry complete; temp files of dead writers are removed;
- a reader checks shapes, dtypes and the CRC-32 (about 25 ms per 150 MB, against ~0.15 s to load) and
  rebuilds a damaged or truncated entry with one warning;
- a folder that cannot be used (read-only, full, below a file, not creatable at all): the arrays are
  computed in memory with one warning, and a partial file is never renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.atomic import remove_stale_temps, write_atomic, write_with
from kiln.console import log, warn
from kiln.data.decode import decode_files
from kiln.spec import ImageSpec

CACHE_VERSION = 3  # 3: CRC-checked entries with a metadata file; 2: ImageSpec geometry
Arrays = dict[str, np.ndarray]
WAIT_NOTE_S = 15.0  # waiting for another process's build: a line this often


def cache_folder(setting: str) -> Path | None:
    """``data.cache_dir`` as a folder: ``~`` expanded; an empty string keeps nothing on disk (memory only)."""
    return Path(setting).expanduser() if setting else None


def image_key(paths: list[Path], spec: ImageSpec, train: bool) -> str:
    """The decode cache's key: the file list (path, size, mtime) and how the files are decoded."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{spec}|{spec.stored(train)}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def crc(arr: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"))


class Entry:
    """The files of one cache entry: ``<name>-<key>.npy`` per array, ``meta-<key>.json``, ``<key>.lock``."""

    def __init__(self, cache_dir: Path, key: str, names: tuple[str, ...]) -> None:
        self.dir, self.key, self.names = cache_dir, key, names
        self.meta, self.lock = cache_dir / f"meta-{key}.json", cache_dir / f"{key}.lock"

    def path(self, name: str) -> Path:
        return self.dir / f"{name}-{self.key}.npy"

    def read(self) -> Arrays | None:
        """The entry, verified; None when there is none; raises ValueError naming what is wrong."""
        if not self.meta.is_file():
            return None
        meta = json.loads(self.meta.read_text())
        out = {}
        for name in self.names:
            path = self.path(name)
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise ValueError(f"{path.name} is unreadable ({e})") from None
            want = meta[name]
            if (
                list(arr.shape) != want["shape"]
                or str(arr.dtype) != want["dtype"]
                or crc(arr) != want["crc32"]
            ):
                raise ValueError(f"{path.name} does not match its checksum (damaged or truncated)")
            out[name] = arr
        with contextlib.suppress(OSError):  # last use, for `kiln cache ls/clear`; a read-only folder keeps it
            os.utime(self.meta)
        return out

    def write(self, arrays: Arrays, about: dict[str, Any]) -> None:
        for name in self.names:
            # not critical: a signal may abort a long cache write (the temp file goes, nothing is trusted)
            write_with(self.path(name), lambda f, a=arrays[name]: np.save(f, a), critical=False)
        meta: dict[str, Any] = {"version": CACHE_VERSION, "key": self.key, "created": time.time(), **about}
        for name in self.names:
            arr = arrays[name]
            meta[name] = {"dtype": str(arr.dtype), "shape": list(arr.shape), "crc32": crc(arr)}
        write_atomic(self.meta, json.dumps(meta, indent=1))  # last: the entry is complete

    def remove(self) -> None:
        for p in (self.meta, *(self.path(n) for n in self.names)):
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(entry: Entry, what: str) -> Iterator[None]:
    """The entry's lock; while another process builds it, wait (a line every 15 s; Ctrl-C works)."""
    entry.dir.mkdir(parents=True, exist_ok=True)
    with open(entry.lock, "a+") as f:
        t0, noted = time.monotonic(), None
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if noted is None or time.monotonic() - noted >= WAIT_NOTE_S:
                    noted = time.monotonic()
                    log(
                        f"kiln: waiting for another kiln process that is computing {what} "
                        f"({noted - t0:.0f} s so far); its result will be reused"
                    )
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def building(cache_dir: Path | None, key: str, what: str) -> Iterator[bool]:
    """Hold the build lock of ``key`` (waiting for another process that holds it). Yields whether the
    cache folder is usable: False (with one warning) when it cannot be used at all."""
    if cache_dir is None:
        yield False
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(Entry(cache_dir, key, ()), what))
        except OSError as e:  # read-only, below a file, not creatable, no permission...
            _no_cache(cache_dir, e)
            yield False
            return
        with contextlib.suppress(OSError):
            remove_stale_temps(cache_dir)
        yield True


def store(cache_dir: Path, key: str, arrays: Arrays, about: dict[str, Any]) -> bool:
    """Write an entry (held under ``building``); False, with one warning, when the folder is full."""
    try:
        Entry(cache_dir, key, tuple(arrays)).write(arrays, about)
        return True
    except OSError as e:  # a full disk: nothing partial was renamed into place
        _no_cache(cache_dir, e)
        return False


def cached(
    cache_dir: Path | None,
    key: str,
    names: tuple[str, ...],
    make: Callable[[], Arrays],
    about: dict[str, Any],
    what: str,
) -> Arrays:
    """The arrays of entry ``key``: read and verified when the cache holds them, else made by ``make()``
    (once: a process that finds another building the same key waits and reuses its result) and stored.
    ``what`` names the contents in messages ("the decoded train images")."""
    found = peek(cache_dir, key, names)
    if found is not None:
        return found
    with building(cache_dir, key, what) as usable:
        found = peek(cache_dir, key, names) if usable else None  # built meanwhile by the one we waited for
        if found is not None:
            return found
        arrays = make()
        if usable:
            store(cache_dir, key, arrays, about)  # type: ignore[arg-type]
        return arrays


def peek(cache_dir: Path | None, key: str, names: tuple[str, ...]) -> Arrays | None:
    """The entry if the cache holds it complete and intact, else None (nothing is built; a damaged entry
    is removed with one warning)."""
    if cache_dir is None:
        return None
    try:
        return _read(Entry(cache_dir, key, names))
    except OSError:  # an unusable folder: nothing there to use
        return None


def _no_cache(cache_dir: Path, e: OSError) -> None:
    warn(
        f"cannot use the cache folder {cache_dir} ({e.strerror or e}); computing in memory this run "
        "(set data.cache_dir to a writable folder with room)"
    )


def _read(entry: Entry) -> Arrays | None:
    try:
        return entry.read()
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        warn(f"the cache entry {entry.meta.name} in {entry.dir} is damaged ({e}); rebuilding it")
        with contextlib.suppress(OSError):
            entry.remove()
        return None


def load_images(
    paths: list[Path],
    spec: ImageSpec,
    train: bool,
    cache_dir: Path | None,
    workers: int,
    what: str = "images",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded images (uint8 ``[N, C, H, W]``) and the (h, w) each fills, from the cache when it holds
    them (verified), else decoded in parallel and cached."""

    def decode() -> Arrays:
        images, extents = decode_files(paths, spec, train, workers, what)
        return {"images": images, "extents": extents}

    root = os.path.commonpath([str(p.parent) for p in paths]) if paths else ""
    about = {"kind": "images", "root": root, "files": len(paths), "spec": str(spec), "train": train}
    arrays = cached(
        cache_dir, image_key(paths, spec, train), ("images", "extents"), decode, about, f"the decoded {what}"
    )
    return _tensors(arrays["images"]), torch.from_numpy(np.array(arrays["extents"]))


def _tensors(arr: np.ndarray) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # a read-only memory map: kiln never writes into it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def entries(cache_dir: Path) -> list[dict[str, Any]]:
    """What the cache holds, newest use first: key, kind, size, dataset root, last use (or damaged)."""
    out = []
    for meta in sorted(cache_dir.glob("meta-*.json")):
        key = meta.stem.removeprefix("meta-")
        try:
            about = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            about = {"root": "(damaged entry)"}
        files = [meta, *cache_dir.glob(f"*-{key}.npy")]
        size = sum(p.stat().st_size for p in files if p.is_file())
        first = about.get("images") or about.get("features") or {}
        out.append(
            {
                "key": key,
                "kind": about.get("kind", "images"),
                "bytes": size,
                "root": about.get("root", ""),
                "files": about.get("files"),
                "shape": first.get("shape"),
                "last_used": meta.stat().st_mtime,
                "created": about.get("created"),
            }
        )
    known = {e["key"] for e in out}
    for p in cache_dir.glob("*-*.npy"):
        key = p.stem.rpartition("-")[2]
        if key not in known:
            known.add(key)
            out.append(
                {
                    "key": key,
                    "kind": "?",
                    "bytes": p.stat().st_size,
                    "root": "(incomplete: no metadata)",
                    "files": None,
                    "shape": None,
                    "last_used": p.stat().st_mtime,
                    "created": None,
                }
            )
    return sorted(out, key=lambda e: -e["last_used"])


def clear(cache_dir: Path, older_than_days: float | None = None) -> tuple[int, int]:
    """Remove entries not used for ``older_than_days`` (all when None) and dead writers' temp files; an
    entry being built (its lock held) is left alone. Returns (entries removed, bytes freed)."""
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else float("inf")
    removed = freed = 0
    for e in entries(cache_dir):
        if e["last_used"] > cutoff:
            continue
        lock = cache_dir / f"{e['key']}.lock"
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a process is building it right now
            for p in (cache_dir / f"meta-{e['key']}.json", *cache_dir.glob(f"*-{e['key']}.npy")):
                p.unlink(missing_ok=True)
            removed, freed = removed + 1, freed + e["bytes"]
        lock.unlink(missing_ok=True)
    remove_stale_temps(cache_dir)
    return removed, freed
