"""Checkpoint files: crafted pickles refused, truncation reported, atomic saves, RNG state. The failed-write
test lowers its own file-size limit in a subprocess and is marked slow by itself."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from kiln import checkpoint
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
    checkpoint.save({"format": checkpoint.FORMAT, "model_state_dict": {"w": torch.ones(1000)}}, p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        checkpoint.load(p)


@pytest.mark.parametrize("content", [b"hello world\n", b"model: resnet\nlr: 0.1\n", bytes(range(256)) * 4])
def test_a_file_of_another_kind_says_so_without_a_bare_number(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "notes.pt"
    p.write_bytes(content)
    with pytest.raises(
        CheckpointError, match=r"notes.pt is not a PyTorch file \(damaged, truncated or another"
    ):
        checkpoint.load(p)


def test_save_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "c" / "last.pt"
    checkpoint.save({"format": checkpoint.FORMAT, "model_state_dict": {"w": torch.zeros(3)}}, p)
    checkpoint.save({"format": checkpoint.FORMAT, "model_state_dict": {"w": torch.ones(3)}}, p)
    assert torch.equal(checkpoint.load(p)["model_state_dict"]["w"], torch.ones(3))
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]


@pytest.mark.slow  # a subprocess (it lowers its own RLIMIT_FSIZE)
def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    """A write that fails mid-file (here: the file-size limit, as a full disk would) leaves the previous
    checkpoint untouched and no temp file behind. Runs in a subprocess that lowers its own RLIMIT_FSIZE."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import resource, signal, torch
        from pathlib import Path
        from kiln import checkpoint
        from kiln.errors import CheckpointError
        p = Path({str(tmp_path / "last.pt")!r})
        checkpoint.save({{"format": checkpoint.FORMAT, "model_state_dict": {{"w": torch.zeros(10)}}}}, p)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG as an OSError instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        try:
            big = {{"w": torch.ones(1_000_000)}}  # 4 MB: cannot fit
            checkpoint.save({{"format": checkpoint.FORMAT, "model_state_dict": big}}, p)
        except CheckpointError as e:
            print("refused:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused:" in proc.stdout, proc.stderr
    assert "previous file is unchanged" in proc.stdout, proc.stderr
    assert torch.equal(checkpoint.load(tmp_path / "last.pt")["model_state_dict"]["w"], torch.zeros(10))
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]


def test_rng_round_trip() -> None:
    import random

    import numpy as np

    state = checkpoint.rng_state()
    python_draw, numpy_draw, torch_draw = random.random(), np.random.rand(), torch.rand(1).item()
    checkpoint.set_rng_state(state)
    assert random.random() == python_draw
    assert np.random.rand() == numpy_draw
    assert torch.rand(1).item() == torch_draw
