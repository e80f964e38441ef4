"""Decoding image files: one at a time (``open_image``), or a list in parallel processes into one uint8
``[N, C, H, W]`` array (``decode_files``), and finding the unreadable ones (``scan_files``)."""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kiln.errors import DataError

Image.MAX_IMAGE_PIXELS = 89_478_485  # PIL's default decompression-bomb bound, made an error below


def open_image(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 ``[C, H, W]``; raises DataError naming the file when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as e:
        raise DataError(
            f"{path}: cannot read image ({type(e).__name__}: {e}); fix or remove the file"
        ) from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def probe_file(path: Path, channels: int | None) -> tuple[int, tuple[int, int]]:
    """Channels and (H, W) of the first image, used when the config leaves them open."""
    try:
        with Image.open(path) as im:
            c = channels or (1 if im.mode in ("1", "L", "I", "I;16", "F") else 3)
            return c, (im.size[1], im.size[0])
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({e}); fix or remove the file") from None


def _decode_chunk(args: tuple[list[str], int, tuple[int, int], bool]) -> np.ndarray:
    paths, channels, size, resize = args
    out = np.empty((len(paths), channels, *size), dtype=np.uint8)
    for i, p in enumerate(paths):
        arr = open_image(Path(p), channels, size if resize else None)
        if arr.shape[1:] != size:
            raise DataError(f"{p}: image is {arr.shape[2]}x{arr.shape[1]} but the first one is "
                            f"{size[1]}x{size[0]}; set data.image_size to resize them all")  # fmt: skip
        out[i] = arr
    return out


def _check_chunk(args: tuple[list[str], int, tuple[int, int], bool, int]) -> list[tuple[int, str]]:
    paths, channels, size, resize, offset = args
    bad = []
    for i, p in enumerate(paths):
        try:
            _decode_chunk(([p], channels, size, resize))
        except DataError as e:
            bad.append((offset + i, str(e)))
    return bad


def scan_files(
    paths: list[Path], channels: int, size: tuple[int, int], resize: bool, workers: int
) -> list[tuple[int, str]]:
    """Every unreadable or misshapen image as (index, message), in parallel, without stopping at the first."""
    chunk = max(64, len(paths) // (workers * 8) + 1)
    jobs = [
        ([str(p) for p in paths[i : i + chunk]], channels, size, resize, i)
        for i in range(0, len(paths), chunk)
    ]
    if workers <= 1 or len(jobs) <= 1:
        return [b for j in jobs for b in _check_chunk(j)]
    with ProcessPoolExecutor(workers) as pool:
        return [b for part in pool.map(_check_chunk, jobs) for b in part]


def decode_files(
    paths: list[Path], channels: int, size: tuple[int, int], resize: bool, workers: int
) -> np.ndarray:
    chunk = max(64, len(paths) // (workers * 8) + 1)
    jobs = [
        ([str(p) for p in paths[i : i + chunk]], channels, size, resize) for i in range(0, len(paths), chunk)
    ]
    if workers <= 1 or len(jobs) == 1:
        parts = [_decode_chunk(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_decode_chunk, jobs))
    return np.concatenate(parts) if parts else np.empty((0, channels, *size), np.uint8)
