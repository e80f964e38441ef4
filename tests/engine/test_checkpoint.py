import os
import pickle
from pathlib import Path

import pytest
import torch

from kiln.engine import checkpoint
from kiln.errors import CheckpointError


class Payload:
    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (os.system, ("touch /tmp/kiln-pwned",))


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    p = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "x": Payload()}, p, pickle_module=pickle)
    Path("/tmp/kiln-pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(p)
    assert not Path("/tmp/kiln-pwned").exists()


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "last.pt"
    checkpoint.save({"model_state_dict": {"w": torch.ones(1000)}}, p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        checkpoint.load(p)


def test_save_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "c" / "last.pt"
    checkpoint.save({"model_state_dict": {"w": torch.zeros(3)}}, p)
    checkpoint.save({"model_state_dict": {"w": torch.ones(3)}}, p)
    assert torch.equal(checkpoint.load(p)["model_state_dict"]["w"], torch.ones(3))
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]


def test_unwritable_target_keeps_old_file(tmp_path: Path) -> None:
    p = tmp_path / "last.pt"
    checkpoint.save({"model_state_dict": {"w": torch.zeros(3)}}, p)
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as a user who can write anyway (root)")
        with pytest.raises(CheckpointError, match="previous file is unchanged"):
            checkpoint.save({"model_state_dict": {"w": torch.ones(3)}}, p)
    finally:
        os.chmod(tmp_path, 0o700)
    assert torch.equal(checkpoint.load(p)["model_state_dict"]["w"], torch.zeros(3))


def test_rng_round_trip() -> None:
    import random

    import numpy as np

    state = checkpoint.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
