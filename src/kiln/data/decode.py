"""Decoding image files into stored pixels: one at a time (``open_image``), or a list in parallel processes
into one uint8 ``[N, C, H, W]`` array (``decode_files``), and finding the unreadable ones (``scan_files``).

Photos are read as a person sees them: EXIF orientation applied; CMYK, palette (with transparency),
16-bit and grayscale files converted properly; large JPEGs decoded at a reduced DCT scale (PIL's
``draft``) when they are only going to be shrunk. How a decoded image is sized is the ``ImageSpec``'s
(``spec.py``): kept as it is, squashed, or resized with its aspect kept (whole for training, the centre
square for evaluation).
"""

from __future__ import annotations

import io
import signal
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageCms, ImageOps

from kiln.console import Progress
from kiln.errors import DataError
from kiln.spec import ImageSpec

T = TypeVar("T")
ANNOUNCE = 2000  # images: a decode or check this large gets start and end lines (smaller ones: after 15 s)

Image.MAX_IMAGE_PIXELS = 89_478_485  # PIL's default decompression-bomb bound, made an error below
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError)
_SRGB = ImageCms.createProfile("sRGB")


def _flatten(im: Image.Image) -> Image.Image:
    """Transparent pixels over white: their own RGB values are arbitrary (often black), white is what
    a viewer shows."""
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode to RGB (channels 3) or L (channels 1), the way it should look."""
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im)
        if im.mode != "I" or arr.max() > 255:  # 16-bit samples: keep the top 8 bits (convert("L") would clip)
            im = Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8))
    if im.mode == "CMYK" and im.info.get("icc_profile"):
        try:  # the file's own colour profile to sRGB; without one PIL's plain conversion below
            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            im = ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = _flatten(im)
    return im.convert("L" if channels == 1 else "RGB")


def _upright_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    return (w, h) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (h, w)  # EXIF turns that swap the sides


def _read(path: Path | BinaryIO, channels: int, shrink_to: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """The image upright in RGB or L, and its full-resolution upright (H, W) (before any draft scaling)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            size = _upright_size(im)
            if shrink_to and im.format == "JPEG":  # decode at 1/2, 1/4, 1/8 scale when that still covers it
                im.draft("L" if channels == 1 else "RGB", (shrink_to, shrink_to))
            im = ImageOps.exif_transpose(im)  # phone photos: stored sideways, shown upright
            return to_mode(im, channels), size


def presized(h: int, w: int, spec: ImageSpec, train: bool) -> tuple[int, int]:
    """(H, W) an (h, w) image is resized to before any crop (``spec.resize`` crop: shorter side to
    ``resize_size``; a train photo longer than ``max_aspect`` is shrunk further so it stays whole)."""
    s = min(spec.resize_size)
    scale = s / min(h, w)
    if train:
        scale = min(scale, spec.stored(True)[0] / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def open_image(
    path: Path | BinaryIO, spec: ImageSpec, train: bool = False, name: str | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """One image (a file, or encoded bytes in a file-like object) as stored: uint8 ``[C, H, W]`` of
    ``spec.stored(train)`` and the (h, w) the photo fills (a train canvas holds the whole photo top-left;
    elsewhere the whole array). A DataError names the file (or ``name``)."""
    name = name or str(path)
    try:
        stored = spec.stored(train)
        im, (h0, w0) = _read(path, spec.channels, max(spec.resize_size) if spec.resize != "none" else None)
        if spec.resize == "none" and (h0, w0) != spec.size:
            raise DataError(
                f"{name}: image is {w0}x{h0} but the first one is {spec.size[1]}x{spec.size[0]}; "
                "set data.resize=crop (or squash) and data.image_size to resize them all"
            )
        resample = RESAMPLE[spec.interpolation]
        if spec.resize == "squash" and (h0, w0) != stored:
            im = im.resize((stored[1], stored[0]), resample)
        elif spec.resize == "crop":
            h, w = presized(h0, w0, spec, train)  # from the full size: the same whether or not drafted
            if (h, w) != (im.size[1], im.size[0]):
                im = im.resize((w, h), resample)
            if not train:  # evaluation: the centre of the resized photo
                top, left = (h - stored[0]) // 2, (w - stored[1]) // 2
                im = im.crop((left, top, left + stored[1], top + stored[0]))
        arr = np.asarray(im, dtype=np.uint8)
    except READ_ERRORS as e:
        detail = (
            f"{type(e).__name__}: {e}"
            if isinstance(path, Path)
            else f"{type(e).__name__}: not an image PIL can read"
        )
        raise DataError(f"{name}: cannot read image ({detail}); fix or remove the file") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    extent = (arr.shape[1], arr.shape[2])
    if arr.shape[1:] != stored:  # a train canvas: the photo top-left, zeros around it
        canvas = np.zeros((arr.shape[0], *stored), np.uint8)
        canvas[:, : extent[0], : extent[1]] = arr
        arr = canvas
    return arr, extent


def probe_file(path: Path, channels: int | None) -> tuple[int, tuple[int, int]]:
    """Channels and (H, W), upright, of one image, from its header (used when the config leaves them open,
    and for the extents of streamed train photos)."""
    try:
        with Image.open(path) as im:
            return channels or (1 if im.mode in ("1", "L", "I", "I;16", "F") else 3), _upright_size(im)
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({e}); fix or remove the file") from None


def decode_batch(
    paths: list[str] | list[Path], spec: ImageSpec, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Files decoded into one array as stored, and the (h, w) each fills (the cache's and the stream's)."""
    out = np.empty((len(paths), spec.channels, *spec.stored(train)), dtype=np.uint8)
    extents = np.empty((len(paths), 2), dtype=np.int32)
    for i, p in enumerate(paths):
        out[i], extents[i] = open_image(Path(p), spec, train)
    return out, extents


def _decode_chunk(args: tuple[list[str], ImageSpec, bool]) -> tuple[np.ndarray, np.ndarray]:
    return decode_batch(*args)  # one picklable argument, for the process pool


def _check_chunk(args: tuple[list[str], ImageSpec, int]) -> list[tuple[int, str]]:
    paths, spec, offset = args
    bad = []
    for i, p in enumerate(paths):
        try:
            open_image(Path(p), spec)
        except DataError as e:
            bad.append((offset + i, str(e)))
    return bad


def _chunks(paths: list[Path], workers: int) -> list[tuple[int, list[str]]]:
    # small enough that progress moves every second or so and Ctrl-C lands between chunks quickly
    # (photos: ~2-5 ms each per core), large enough that the pool's overhead stays under ~1 %
    size = max(16, min(128, len(paths) // (workers * 8) + 1))
    return [(i, [str(p) for p in paths[i : i + size]]) for i in range(0, len(paths), size)]


def _ignore_sigint() -> None:
    # Ctrl-C on a terminal reaches the whole process group: the parent decides, the workers carry on
    # until it stops them (no KeyboardInterrupt traceback from every worker); SIGTERM, with which the
    # parent stops them, ends them the default way (not through the handler they inherited by fork)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def parallel(
    fn: Callable[[Any], T],
    jobs: list[Any],
    sizes: list[int],
    workers: int,
    desc: str,
    consume: Callable[[int, T], None],
) -> None:
    """``consume(i, fn(jobs[i]))`` for every job, ``fn`` in worker processes, each result consumed as it
    arrives (nothing held twice), with progress (``sizes``: images per job). An exception or a signal
    stops the workers at once: none is left running."""
    with Progress(desc, sum(sizes), "img", announce=sum(sizes) >= ANNOUNCE) as progress:
        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                consume(i, fn(job))
                progress.update(sizes[i])
            return
        pool = ProcessPoolExecutor(workers, initializer=_ignore_sigint)
        try:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                i = futures[future]
                if future.exception() is not None:  # the first bad file in the list's order, whichever
                    raise _first_failure(futures, i)  # worker found one first
                consume(i, future.result())
                progress.update(sizes[i])
        except BaseException:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # now: a worker mid-chunk would finish it first otherwise
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def scan_files(paths: list[Path], spec: ImageSpec, workers: int) -> list[tuple[int, str]]:
    """Every unreadable or misshapen image as (index, message), in parallel, without stopping at the first."""
    chunks = _chunks(paths, workers)
    jobs = [(chunk, spec, i) for i, chunk in chunks]
    bad: list[tuple[int, str]] = []
    parallel(
        _check_chunk,
        jobs,
        [len(c) for _, c in chunks],
        workers,
        f"checking {len(paths):,} images",
        lambda _, found: bad.extend(found),
    )
    return sorted(bad)


def decode_files(
    paths: list[Path], spec: ImageSpec, train: bool, workers: int, what: str = "images"
) -> tuple[np.ndarray, np.ndarray]:
    """All images as stored (``open_image``), in parallel processes: (uint8 [N, C, H, W], extents [N, 2]).
    Each chunk is copied into one preallocated array as it arrives (no second copy of the whole set)."""
    out = np.empty((len(paths), spec.channels, *spec.stored(train)), dtype=np.uint8)
    extents = np.empty((len(paths), 2), dtype=np.int32)
    chunks = _chunks(paths, workers)

    def place(i: int, decoded: tuple[np.ndarray, np.ndarray]) -> None:
        start, n = chunks[i][0], len(chunks[i][1])
        out[start : start + n], extents[start : start + n] = decoded

    jobs = [(chunk, spec, train) for _, chunk in chunks]
    parallel(
        _decode_chunk, jobs, [len(c) for _, c in chunks], workers, f"decoding {len(paths):,} {what}", place
    )
    return out, extents


def _first_failure(futures: dict[Any, int], failed: int) -> BaseException:
    """The error of the earliest job that fails: jobs after ``failed`` are cancelled, the ones before it
    are waited for (they are running or done: a few seconds at most), so the same file is named every run."""
    for future, i in futures.items():
        if i > failed:
            future.cancel()
    for future, i in sorted(futures.items(), key=lambda item: item[1]):
        if i <= failed and future.exception() is not None:
            return future.exception()  # type: ignore[return-value]
    raise AssertionError("unreachable")
