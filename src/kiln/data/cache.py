"""The decode cache: a dataset's decoded images as one ``.npy`` file, memory-mapped on later runs.

The cache key is a fingerprint of the file list (path, size, mtime) and the decode settings, so a changed,
added or removed file rebuilds it and an unchanged dataset loads in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from kiln.data.decode import decode_files

CACHE_VERSION = 1


def fingerprint(paths: list[Path], channels: int, size: tuple[int, int], resize: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{channels}|{size}|{resize}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def load_images(
    paths: list[Path],
    channels: int,
    size: tuple[int, int],
    resize: bool,
    cache_dir: Path | None,
    workers: int,
) -> torch.Tensor:
    """Decoded images as a uint8 tensor, from the on-disk cache when the fingerprint matches."""
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"images-{fingerprint(paths, channels, size, resize)}.npy"
        if cache_file.is_file():
            try:
                arr = np.load(cache_file, mmap_mode="r")
                if arr.shape == (len(paths), channels, *size):
                    with warnings.catch_warnings():  # read-only memory map: kiln never writes into it
                        warnings.simplefilter("ignore", UserWarning)
                        return torch.from_numpy(arr)
            except (OSError, ValueError):
                pass  # a damaged cache file is rebuilt below
    arr = decode_files(paths, channels, size, resize, workers)
    if cache_file is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, cache_file)  # atomic: a reader never sees a half-written cache
        except OSError as e:
            warnings.warn(f"could not write the image cache in {cache_dir} ({e}); decoding again next run",
                          stacklevel=2)  # fmt: skip
    return torch.from_numpy(arr)
