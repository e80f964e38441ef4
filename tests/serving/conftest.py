"""A real Triton server for the serving tests: the binary of the nvidia-pytriton wheel, on free loopback
ports, serving a repository kiln exported from a freshly trained model; stopped on exit, also when a test
fails. Skipped with the reason only where the serving environment cannot be installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kiln.errors import KilnError

PHOTOS = [(64, 48), (40, 70), (90, 90), (33, 20), (120, 80), (50, 50)]  # (w, h): every size and aspect


@pytest.fixture(scope="session")
def serve_env():  # type: ignore[no-untyped-def]
    from kiln.serving.env import ensure

    try:
        return ensure()
    except KilnError as e:
        pytest.skip(f"the serving environment (nvidia-pytriton, numpy<2) cannot be installed here: {e}")


def write_photos(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """A folder of JPEG 'photos' of many sizes whose class shows in their colours (red, green, blue)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for k, name in enumerate(("red", "green", "blue")):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = PHOTOS[(i + k) % len(PHOTOS)]
                arr = rng.normal(60, 30, (h, w, 3))
                arr[..., k] += 120
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def photo_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(best.pt of a 2-epoch model on photos of every size, the photo folder)."""
    from kiln.config import load_config
    from kiln.engine.trainer import fit
    from tests.conftest import ROOT

    base = tmp_path_factory.mktemp("serve")
    photos = write_photos(base / "photos")
    fit(
        load_config(
            ROOT / "configs/digits.yaml",
            [
                f"run.dir={base / 'run'}",
                "trainer.progress=off",
                "logging.tensorboard=false",
                "trainer.epochs=2",
                "data.source=folder",
                f"data.root={photos}",
                "data.image_size=32",
                "data.batch_size=10",
                f"data.cache_dir={base / 'cache'}",
                "model.name=resnet_small",
                "model.args={widths: [8, 16]}",
            ],
        )
    )
    return base / "run" / "checkpoints" / "best.pt", photos


@pytest.fixture(scope="module")
def triton(
    serve_env, photo_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:  # type: ignore[no-untyped-def]
    from kiln.export.run import export_checkpoint
    from kiln.serving.server import TritonServer, free_port
    from tests.export import options

    repo = tmp_path_factory.mktemp("repo")
    export_checkpoint(photo_model[0], "triton", repo, opts=options("photos", backend="python"))
    server = TritonServer(serve_env, repo, free_port(), free_port(), log_file=repo.parent / "triton.log")
    with server:  # stopped on the way out, whatever the tests did
        yield server
    assert server.proc is not None
    assert server.proc.poll() is not None
