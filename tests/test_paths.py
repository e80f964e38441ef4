"""RunDir: the one place that knows the run folder's layout; output_dir: the one check of a folder a command
writes into. The export round trip trains a model first and is marked slow by itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.paths import MARKER, RunDir, output_dir


def test_layout_and_resume_candidates(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.last == tmp_path / "checkpoints/last.pt"
    assert run.best == tmp_path / "checkpoints/best.pt"
    assert run.epoch_checkpoint(3) == tmp_path / "checkpoints/epoch-3.pt"
    assert run.metrics.name == "metrics.jsonl"
    assert run.summary.name == "summary.json"
    assert RunDir.of_checkpoint(run.best) == RunDir(tmp_path.resolve())
    assert run.resume_candidates() == []
    run.check_writable()
    for i, p in enumerate([run.epoch_checkpoint(10), run.epoch_checkpoint(2), run.best, run.last]):
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
    assert run.epoch_checkpoints() == [
        run.epoch_checkpoint(2),
        run.epoch_checkpoint(10),
    ]  # by epoch, not name
    assert run.resume_candidates() == [
        run.last,
        run.epoch_checkpoint(2),
        run.epoch_checkpoint(10),
    ]  # newest first


def test_unwritable_run_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(KilnError, match="run.dir: cannot write to .*; choose another run.dir"):
        RunDir(tmp_path / "file" / "run").check_writable()


# --- output_dir: the one check every command runs on the folder it writes into ---------------------------


def user_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder of the user's own files, and what they hold (to check they are untouched)."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    files = {"notes.txt": b"my notes", "sub/data.csv": b"a,b\n1,2\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, files


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_new_folder_is_made_and_marked_as_kilns(tmp_path: Path) -> None:
    out = output_dir(tmp_path / "a" / "b", "--out")
    assert out.is_dir()
    assert (out / MARKER).is_file()


def test_a_marked_folder_is_reused(tmp_path: Path) -> None:
    out = output_dir(tmp_path / "out", "--out")
    (out / "model.onnx").write_bytes(b"an earlier export")
    assert output_dir(out, "--out") == out


@pytest.mark.parametrize(
    "earlier", ["export.json", "report.json", "results.json", ".kiln.lock", "run_info.json"]
)
def test_an_earlier_kiln_output_without_a_marker_is_reused(tmp_path: Path, earlier: str) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / earlier).write_text("{}")
    (tmp_path / "out" / "model.pt").write_bytes(b"x")
    assert output_dir(tmp_path / "out", "--out") == tmp_path / "out"


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"mine")
    with pytest.raises(KilnError) as e:
        output_dir(tmp_path / "model.onnx", "--out")
    assert str(e.value) == f"--out: {tmp_path / 'model.onnx'} is a file, not a folder; choose another --out"
    assert (tmp_path / "model.onnx").read_bytes() == b"mine"


def test_a_path_below_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(KilnError) as e:
        output_dir(tmp_path / "file" / "a" / "b", "--out")
    assert str(e.value) == (
        f"--out: cannot write to {tmp_path / 'file/a/b'} ({tmp_path / 'file'} is a file); "
        "choose another --out"
    )


@pytest.mark.parametrize("path", ["/sys/kiln-output-test", "/proc/self/kiln-output-test"])
def test_a_folder_that_cannot_be_made_says_why(path: str) -> None:
    # the tests run as root, whom chmod does not stop: /sys and /proc refuse new folders to anyone
    with pytest.raises(KilnError, match=f"^--out: cannot write to {path} \\(.+\\); choose another --out$"):
        output_dir(path, "--out")


def test_a_folder_of_the_users_files_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    folder, files = user_folder(tmp_path)
    with pytest.raises(KilnError) as e:
        output_dir(folder, "--out")
    assert str(e.value) == (
        f"--out: {folder} is not empty and holds files kiln did not make ('notes.txt', 'sub'); kiln never "
        "overwrites what it did not create: choose an empty or new folder"
    )
    assert contents(folder) == files
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]  # no marker, no probe left


def test_a_shared_parent_may_hold_anything_and_is_not_marked(tmp_path: Path) -> None:
    folder, files = user_folder(tmp_path)
    assert output_dir(folder, "--out", contents="any") == folder
    assert contents(folder) == files


def test_a_new_project_needs_a_new_or_empty_folder_even_one_kiln_made(tmp_path: Path) -> None:
    out = output_dir(tmp_path / "out", "--out")
    with pytest.raises(KilnError, match="is not empty"):
        output_dir(out, "NAME", contents="none")


def test_the_run_folder_is_checked_the_same_way(tmp_path: Path) -> None:
    folder, files = user_folder(tmp_path)
    with pytest.raises(KilnError, match=f"^run.dir: {folder} is not empty and holds files kiln did not make"):
        RunDir(folder).hold().__enter__()
    assert contents(folder) == files


def test_export_and_eval_check_their_out_before_reading_the_checkpoint(tmp_path: Path) -> None:
    from kiln.evaluation.run import evaluate_checkpoint
    from kiln.export.run import export_checkpoint

    (tmp_path / "taken").write_text("")
    missing = tmp_path / "no-such-checkpoint.pt"  # the --out error comes first: nothing was read
    with pytest.raises(KilnError, match="^--out: .*taken is a file, not a folder"):
        export_checkpoint(missing, "onnx", tmp_path / "taken")
    with pytest.raises(KilnError, match="^--out: .*taken is a file, not a folder"):
        evaluate_checkpoint(missing, out_dir=tmp_path / "taken")


def test_a_triton_repository_may_hold_other_models_but_not_the_model_folder(tmp_path: Path) -> None:
    from kiln.export.run import export_checkpoint

    folder, files = user_folder(tmp_path)
    with pytest.raises(KilnError, match="checkpoint not found"):  # the repository itself passes
        export_checkpoint(tmp_path / "none.pt", "triton", folder)
    with pytest.raises(KilnError, match="^--out: .*notes.txt is a file, not a folder"):
        export_checkpoint(tmp_path / "none.pt", "triton", folder / "notes.txt")
    assert contents(folder) == files


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            ["tune", "-c", "CONFIG", "--space", "SPACE", "--out", "FILE"],
            "--out: FILE is a file, not a folder",
        ),
        (["tune", "-c", "CONFIG", "--space", "SPACE", "--out", "MINE"], "--out: MINE is not empty"),
        (["new", "FILE"], "NAME: FILE is a file, not a folder"),
        (["new", "MINE"], "NAME: MINE is not empty"),
        (["eval", "--checkpoint", "CKPT", "--out", "MINE"], "--out: MINE is not empty"),
        (["export", "--checkpoint", "CKPT", "--format", "onnx", "--out", "FILE/x"], "--out: cannot write to"),
    ],
)
def test_every_command_refuses_a_bad_out_in_one_line(
    tmp_path: Path, command: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kiln.cli import main
    from tests.conftest import ROOT

    folder, files = user_folder(tmp_path)
    (tmp_path / "file").write_bytes(b"mine")
    (tmp_path / "space.yaml").write_text("optimizer.lr: {choice: [0.1, 0.2]}\n")
    names = {
        "CONFIG": str(ROOT / "configs/digits.yaml"),
        "SPACE": str(tmp_path / "space.yaml"),
        "FILE": str(tmp_path / "file"),
        "MINE": str(folder),
        "CKPT": str(tmp_path / "none.pt"),
    }

    def fill(text: str) -> str:
        for placeholder, value in names.items():
            text = text.replace(placeholder, value)
        return text

    assert main([fill(a) for a in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: error: {fill(expected)}")
    assert err.count("\n") == 1
    assert contents(folder) == files
    assert (tmp_path / "file").read_bytes() == b"mine"


@pytest.mark.slow
def test_an_earlier_kiln_export_is_replaced_and_a_users_model_folder_is_not(tmp_path: Path) -> None:
    from kiln.export.run import export_checkpoint
    from tests.export import options, trained

    ckpt = trained("mlp", tmp_path / "runs")
    export_checkpoint(ckpt, "onnx", tmp_path / "out", opts=options(max_batch_size=4))
    (tmp_path / "out" / MARKER).unlink()  # as an export written before kiln marked its folders
    assert export_checkpoint(ckpt, "onnx", tmp_path / "out", opts=options(max_batch_size=4))["passed"]
    repo, files = user_folder(tmp_path)  # a Triton repository of the user's: "sub" is their model
    assert export_checkpoint(ckpt, "triton", repo, opts=options("m", max_batch_size=4))["passed"]
    with pytest.raises(KilnError, match=f"^--out: {repo / 'sub'} is not empty and holds files kiln did not"):
        export_checkpoint(ckpt, "triton", repo, opts=options("sub", max_batch_size=4))
    assert {k: v for k, v in contents(repo).items() if not k.startswith("m/")} == files
