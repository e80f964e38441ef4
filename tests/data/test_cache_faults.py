"""The decode cache under faults, against real processes: killed at random moments while it is written,
two builders racing on one key, flipped bytes, a read-only folder, a write under a real file-size limit.
Every case ends with the right images or one warning line, and no partial entry is ever trusted."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kiln.data.cache import Entry, entries, image_key, load_images
from kiln.spec import ImageSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # loader subprocesses, killed and raced
SPEC = ImageSpec(3, (96, 96))

# load the folder's images through the cache, print a CRC of the pixels and how they were obtained
LOADER = textwrap.dedent("""
    import sys, zlib, resource, signal
    from pathlib import Path
    from kiln.data.cache import load_images
    from kiln.spec import ImageSpec
    folder, cache = Path(sys.argv[1]), Path(sys.argv[2])
    if len(sys.argv) > 3:  # a file-size limit, as a full disk: EFBIG instead of being killed by SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
    x, _ = load_images(sorted(folder.glob("*.png")), ImageSpec(3, (96, 96)), False, cache, workers=1)
    print("CRC", zlib.crc32(x.numpy().tobytes()))
""")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(300):  # 8 MB decoded: long enough to kill mid-decode and mid-write
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def truth(folder: Path) -> int:
    x, _ = load_images(sorted(folder.glob("*.png")), SPEC, False, None, workers=1)
    return zlib.crc32(x.numpy().tobytes())


def _load(
    folder: Path, cache: Path, *extra: str, wait: bool = True, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [*prefix, sys.executable, "-c", LOADER, str(folder), str(cache), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


NAMES = ("images", "extents")


def _crc(out: str) -> int:
    return int(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("CRC")))


def test_killed_at_random_moments_then_reused(folder: Path, truth: int, tmp_path: Path) -> None:
    rng = random.Random(0)
    for _ in range(6):
        proc = _load(folder, tmp_path, wait=False)
        time.sleep(rng.uniform(0.3, 3.0))
        proc.kill()
        proc.wait()
        for meta in tmp_path.glob("meta-*.json"):  # whatever is marked complete is complete and correct
            Entry(tmp_path, meta.stem[5:], NAMES).read()
    done = _load(folder, tmp_path)
    assert done.returncode == 0, done.stderr
    assert _crc(done.stdout) == truth, done.stderr
    again = _load(folder, tmp_path)
    assert _crc(again.stdout) == truth
    assert "warning" not in again.stderr  # reused, clean
    assert not list(tmp_path.glob(".*.tmp-*"))  # killed writers' temp files were removed


def test_two_builders_race_on_one_key(folder: Path, truth: int, tmp_path: Path) -> None:
    procs = [_load(folder, tmp_path, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [_crc(o) for o, _ in outs] == [truth, truth]
    assert len(list(tmp_path.glob("images-*.npy"))) == 1
    assert len(entries(tmp_path)) == 1


def test_flipped_bytes_are_found_and_the_entry_rebuilt(folder: Path, truth: int, tmp_path: Path) -> None:
    assert _crc(_load(folder, tmp_path).stdout) == truth
    images = next(tmp_path.glob("images-*.npy"))
    with open(images, "r+b") as f:  # one flipped byte deep in the pixels, the shape untouched
        f.seek(images.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    damaged = _load(folder, tmp_path)
    assert _crc(damaged.stdout) == truth
    assert damaged.stderr.count("is damaged") == 1
    assert "does not match its checksum" in damaged.stderr
    truncated = next(tmp_path.glob("images-*.npy"))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    assert _crc(_load(folder, tmp_path).stdout) == truth


def test_read_only_folder_decodes_into_memory_with_one_warning(folder: Path, truth: int) -> None:
    """As root (who may write anywhere) the loader runs as `nobody`, for whom the folder is read-only."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: no user for whom a folder can be read-only")
        prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    base = Path(tempfile.mkdtemp(prefix="kiln-ro-"))
    try:
        base.chmod(0o755)
        shutil.copytree(folder, base / "imgs")
        for p in [base / "imgs", *(base / "imgs").iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        (base / "ro").mkdir(mode=0o555)
        out = _load(base / "imgs", base / "ro", prefix=prefix)
        assert _crc(out.stdout) == truth, out.stderr
        assert out.stderr.count("cannot use the cache folder") == 1
        assert not list((base / "ro").iterdir())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_write_under_a_file_size_limit_leaves_nothing_trusted(
    folder: Path, truth: int, tmp_path: Path
) -> None:
    limited = _load(folder, tmp_path, str(1_000_000))  # 1 MB: the 8 MB entry cannot be written
    assert limited.returncode == 0, limited.stderr
    assert _crc(limited.stdout) == truth, limited.stderr
    assert limited.stderr.count("cannot use the cache folder") == 1
    assert not list(tmp_path.glob("meta-*.json"))
    assert not list(tmp_path.glob(".*.tmp-*"))
    key = image_key(sorted(folder.glob("*.png")), SPEC, False)
    assert not Entry(tmp_path, key, NAMES).meta.exists()
    full = _load(folder, tmp_path)  # with room again: built, complete, reused
    assert _crc(full.stdout) == truth
    assert Entry(tmp_path, key, NAMES).meta.exists()
