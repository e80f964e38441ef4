"""The serving environment's folder: kiln removes only what it made (its marker, or an empty folder); a
KILN_SERVE_ENV that names a folder of the user's is refused with one line and left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.serving.env import PYTRITON, ServeEnv, claim, create


def user_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path / "work"
    (folder / "project").mkdir(parents=True)
    files = {"thesis.tex": b"years of work", "project/main.py": b"print('mine')\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, files


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_of_the_users_files_is_refused_and_untouched(tmp_path: Path) -> None:
    folder, files = user_folder(tmp_path)
    with pytest.raises(KilnError) as e:
        create(folder)  # what `kiln serve` runs when the folder is not a ready environment
    assert str(e.value) == (
        f"KILN_SERVE_ENV: {folder} holds files kiln did not make; kiln never deletes them. Set "
        "KILN_SERVE_ENV to a new or empty folder for the serving environment"
    )
    assert contents(folder) == files


@pytest.mark.slow
def test_kiln_serve_setup_refuses_it_in_one_line(tmp_path: Path) -> None:
    folder, files = user_folder(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", "serve", "--setup"],
        env={**os.environ, "KILN_SERVE_ENV": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr == f"kiln: error: KILN_SERVE_ENV: {folder} holds files kiln did not make; kiln never "
        "deletes them. Set KILN_SERVE_ENV to a new or empty folder for the serving environment\n"
    )
    assert contents(folder) == files


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "env").write_bytes(b"mine")
    with pytest.raises(KilnError, match="is not a folder; set it to a new or empty folder"):
        claim(tmp_path / "env")
    assert (tmp_path / "env").read_bytes() == b"mine"


@pytest.mark.parametrize("exists", [False, True])
def test_a_new_or_empty_folder_gets_the_marker_before_anything_else(tmp_path: Path, exists: bool) -> None:
    root = tmp_path / "env"
    if exists:
        root.mkdir()
    claim(root)
    assert [p.name for p in root.iterdir()] == ["kiln-serve-env.txt"]
    assert not ServeEnv(root).ready()  # marked as kiln's, not yet an environment


def test_a_half_made_environment_of_kilns_is_cleared_and_remade(tmp_path: Path) -> None:
    root = tmp_path / "env"
    claim(root)
    (root / "lib" / "python3.11").mkdir(parents=True)  # what a pip killed half way leaves
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    claim(root)
    assert [p.name for p in root.iterdir()] == ["kiln-serve-env.txt"]


def test_only_the_finished_marker_makes_an_environment_ready(tmp_path: Path) -> None:
    env = ServeEnv(tmp_path / "env")
    env.tritonserver.parent.mkdir(parents=True)
    env.tritonserver.write_bytes(b"")
    (env.backends / "python").mkdir(parents=True)
    env.marker.write_text("a kiln serving environment, being set up by pid 1\n")
    assert not env.ready()
    env.marker.write_text(f"{PYTRITON}\npython 3.11\n")
    assert env.ready()
