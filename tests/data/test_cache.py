"""The decode cache: reused while the files are unchanged, rebuilt when one changes; pixels equal PIL's;
a corrupt or misshapen image is named."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kiln.data.cache import load_images
from kiln.errors import DataError
from kiln.spec import ImageSpec

AS_IS, SQUASH = ImageSpec(3, (12, 12)), ImageSpec(3, (12, 12), "squash")


def _load(paths: list[Path], spec: ImageSpec, cache: Path | None, workers: int) -> torch.Tensor:
    return load_images(paths, spec, False, cache, workers)[0]


def _paths(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def test_cache_reused_then_rebuilt_on_change(png_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = _paths(png_folder)
    a = _load(paths, AS_IS, cache, workers=2)
    files = list(cache.glob("images-*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = _load(paths, AS_IS, cache, workers=2)
    assert torch.equal(a, b)
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    # change one file: new content, new mtime -> a new fingerprint and a rebuild
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(mtime + 10**9, mtime + 10**9))
    c = _load(paths, AS_IS, cache, workers=1)
    assert len(list(cache.glob("images-*.npy"))) == 2
    assert int(c[0].sum()) == 0  # the changed file's new pixels
    assert torch.equal(c[1:], a[1:])


def test_decoded_pixels_match_pil(png_folder: Path) -> None:
    paths = _paths(png_folder)[:5]
    x = _load(paths, AS_IS, None, workers=1)
    for i, p in enumerate(paths):
        assert np.array_equal(x[i].permute(1, 2, 0).numpy(), np.asarray(Image.open(p).convert("RGB")))


def test_corrupt_image_is_named(png_folder: Path) -> None:
    paths = _paths(png_folder)
    paths[3].write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=f"{paths[3].name}: cannot read image"):
        _load(paths, AS_IS, None, workers=2)


def test_size_mismatch_says_how_to_resize(png_folder: Path) -> None:
    paths = _paths(png_folder)
    Image.new("RGB", (20, 12)).save(paths[2])
    with pytest.raises(DataError, match=r"set data.resize=crop \(or squash\) and data.image_size"):
        _load(paths, AS_IS, None, workers=1)
    assert _load(paths, SQUASH, None, workers=1).shape == (len(paths), 3, 12, 12)
