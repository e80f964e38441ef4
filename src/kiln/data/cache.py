"""The decode cache: a split's decoded images as one ``.npy`` file (and, for train photos, their extents),
memory-mapped on later runs.

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
from kiln.data.spec import ImageSpec

CACHE_VERSION = 2  # 2: ImageSpec geometry (resize modes, train canvases with extents)


def fingerprint(paths: list[Path], spec: ImageSpec, train: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{spec}|{spec.stored(train)}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None  # a damaged cache file is rebuilt
    return arr if arr.shape == shape else None


def load_images(paths: list[Path], spec: ImageSpec, train: bool, cache_dir: Path | None,
                workers: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Decoded images (uint8 ``[N, C, H, W]``) and the (h, w) each fills, from the on-disk cache when the
    fingerprint matches."""
    shape = (len(paths), spec.channels, *spec.stored(train))
    files = None
    if cache_dir is not None:
        key = fingerprint(paths, spec, train)
        files = cache_dir / f"images-{key}.npy", cache_dir / f"extents-{key}.npy"
        arr, ext = _load(files[0], shape), _load(files[1], (len(paths), 2))
        if arr is not None and ext is not None:
            with warnings.catch_warnings():  # read-only memory map: kiln never writes into it
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(arr), torch.from_numpy(np.array(ext))
    arr, ext = decode_files(paths, spec, train, workers)
    if files is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            for data, target in ((ext, files[1]), (arr, files[0])):  # images last: they mark a complete entry
                tmp = target.with_suffix(f".tmp{os.getpid()}.npy")
                np.save(tmp, data)
                os.replace(tmp, target)  # atomic: a reader never sees a half-written cache
        except OSError as e:
            warnings.warn(f"could not write the image cache in {cache_dir} ({e}); decoding again next run",
                          stacklevel=2)  # fmt: skip
    return torch.from_numpy(arr), torch.from_numpy(ext)
