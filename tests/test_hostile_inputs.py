"""Hostile config and weight files: every kind of bad input is refused with one line naming the file (and
the line, or the config key), in bounded time, before it can cost memory or print a traceback. The tests
that run `kiln train` or `kiln predict` as subprocesses are marked slow one by one; the rest call the readers
in process."""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch

from kiln import checkpoint
from kiln.config import apply_overrides, load_config, read_config_file
from kiln.config.reader import MAX_BYTES
from kiln.errors import BRIEF, CheckpointError, ConfigError
from kiln.models.preprocessing import weights_preprocessing
from kiln.registry import MODELS
from kiln.tuning.space import load_space
from tests.conftest import ROOT, run_kiln

DIGITS = ROOT / "configs/digits.yaml"


def billion_laughs(levels: int = 9) -> str:
    """Each level a list of ten aliases of the one before: 10**levels values from a few hundred bytes."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        read_config_file(path)
    return str(e.value)


# --- config files: what the file is ---------------------------------------------------------------------


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_a_folder_given_as_the_config_says_folder_not_missing(tmp_path: Path) -> None:
    assert refusal(tmp_path) == f"config file {tmp_path} is a folder; give the file in it"


def test_an_unreadable_config_file_says_why() -> None:
    # /proc/self/mem is a regular file that no read at offset 0 succeeds on (root included: chmod would
    # not do)
    assert (
        refusal(Path("/proc/self/mem")) == "config file /proc/self/mem: cannot read it (Input/output error)"
    )


def test_a_device_is_not_read_forever() -> None:
    assert refusal(Path("/dev/zero")) == "config file /dev/zero is not a regular file"


def test_a_file_too_large_for_a_config_is_refused_without_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "huge.yaml", "a: " + "x" * MAX_BYTES)
    started = time.perf_counter()
    message = refusal(path)
    assert message.startswith(f"{path}: more than 4 MiB, too large for a config file")
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"run: {name: caf\xe9}\n", ":1: not UTF-8 text (byte 0xe9 at offset 15)"),  # Latin-1
        (b"a: 1\nb: 2\n\xff\xfe\n", ":3: not UTF-8 text (byte 0xff at offset 10)"),
        # a byte-order mark, then half a character
        (b"\xef\xbb\xbfa: 1\nb: \xc3\n", ":2: not UTF-8 text (byte 0xc3 at offset 11)"),
    ],
)
def test_bytes_that_are_not_utf8_are_named_by_offset_and_line(
    tmp_path: Path, data: bytes, where: str
) -> None:
    path = write(tmp_path, "c.yaml", data)
    assert refusal(path).startswith(f"{path}{where}")


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    assert read_config_file(write(tmp_path, "c.json", b'\xef\xbb\xbf{"trainer": {"epochs": 2}}')) == {
        "trainer": {"epochs": 2}
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- 1\n- 2\n", "the top level must be a mapping of sections, got list"),
        ("just a string\n", "the top level must be a mapping of sections, got str"),
    ],
)
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "c.yaml", text)
    assert refusal(path) == f"{path}: {expected}"


# --- config files: what the text holds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("flow.yaml", "model:\n  args: " + "[" * 10_000 + "]" * 10_000 + "\n"),
        ("maps.yaml", "model:\n  args: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"),
        ("deep.json", '{"model": {"args": ' + "[" * 10_000 + "]" * 10_000 + "}}"),
    ],
)
def test_nesting_ten_thousand_deep_is_refused_in_under_a_second(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    started = time.perf_counter()
    message = refusal(path)
    assert time.perf_counter() - started < 1
    assert "nested more than 100 levels deep" in message
    assert message.startswith(str(path))


def test_nesting_just_past_the_bound_is_refused_where_json_itself_accepts_it(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"a": ' + "[" * 150 + "]" * 150 + "}")
    assert refusal(path) == f"{path}: nested more than 100 levels deep"


def test_the_line_of_deep_yaml_nesting_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "run: {name: x}\n\nmodel:\n  args: " + "[" * 200 + "]" * 200 + "\n")
    assert refusal(path) == f"{path}:4: nested more than 100 levels deep"


@pytest.mark.parametrize(
    "text",
    [
        billion_laughs(9),  # 10**9 values from 500 bytes
        "s: &s " + "x" * 200_000 + "\nmany: [" + ", ".join(["*s"] * 100) + "]\n",  # 20 MB from 200 kB
        # one map aliased into a map aliased ...: few values per level, 2**40 at the end
        "a: &a {k: v}\n"
        + "".join(
            f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]\n"
            for i in range(40)
        ),
    ],
)
def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "bomb.yaml", text)
    started = time.perf_counter()
    message = refusal(path)
    assert time.perf_counter() - started < 1
    assert "aliases expand to more than 100,000 values" in message
    assert message.startswith(f"{path}:")


def test_aliases_that_nest_deeper_than_the_bound_are_refused(tmp_path: Path) -> None:
    # each anchor one level deep, each holding the one before: 150 levels only once the aliases expand
    text = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 150))
    assert "its aliases nest more than 100 levels deep" in refusal(write(tmp_path, "c.yaml", text))


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: {c: *a}}\n"])
def test_a_recursive_alias_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "c.yaml", text)
    assert refusal(path) == (
        f"{path}:1: a recursive alias (an anchor used inside itself); a config cannot contain itself"
    )


def test_aliases_and_merge_keys_a_real_config_uses_still_work(tmp_path: Path) -> None:
    text = "base: &base {lr: 0.1, momentum: 0.9}\noptimizer:\n  <<: *base\n  lr: 0.01\nother: *base\n"
    raw = read_config_file(write(tmp_path, "c.yaml", text))
    assert raw["optimizer"] == {"lr": 0.01, "momentum": 0.9}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "top.yaml",
            "trainer:\n  epochs: 3\nmodel: {}\ntrainer:\n  epochs: 4\n",
            "'trainer' at lines 1 and 4",
        ),
        ("deep.yaml", "a:\n  b:\n    c:\n      lr: 1\n      x: 2\n      lr: 3\n", "'lr' at lines 4 and 6"),
        ("flow.yaml", "model: {name: mlp, name: lenet}\n", "'name' at lines 1 and 1"),
        ("int.yaml", "m:\n  1: a\n  0x1: b\n", "1 at lines 2 and 3"),  # the same int written twice
        ("top.json", '{"trainer": {"epochs": 2},\n "trainer": {"epochs": 3}}', "'trainer' at lines 1 and 2"),
        ("deep.json", '{"a": {"b": [{"c": 1,\n\n  "c": 2}]}}', "'c' at lines 1 and 3"),
        ("tabs.json", '{\n\t"a": 1,\n\t"a": 2\n}', "'a' at lines 2 and 3"),  # tabs: not YAML, JSON
    ],
)
def test_a_duplicate_key_names_the_key_and_both_lines(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = write(tmp_path, name, text)
    assert refusal(path) == f"{path}: duplicate key {expected}; keep one of them"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1, 2\nb: 3\n", ":2: not valid YAML: expected ',' or ']', but got ':'"),
        ("a: \x00\n", ": not valid YAML: unacceptable character #x0000: special characters are not allowed"),
        ("a: " + "1" * 5000 + "\n", ": not valid YAML: Exceeds the limit (4300 digits) for integer string"),
        ("run: !!python/object/apply:os.system ['touch pwned']\n", ":1: not valid YAML: could not determine"),
    ],
)
def test_invalid_yaml_is_one_line_with_its_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "c.yaml", text)
    message = refusal(path)
    assert message.startswith(f"{path}{expected}")
    assert "\n" not in message


# --- key=value overrides and the tune space file read the same way -------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.args=" + "[" * 10_000 + "]" * 10_000,
            "override model.args: nested more than 100 levels deep",
        ),
        (
            "model.args={hidden: [8], hidden: [16]}",
            "override model.args: duplicate key 'hidden' at lines 1 and 1",
        ),
        ("model.args=&a [*a]", "override model.args: a recursive alias"),
        ("a" + ".a" * 500 + "=1", "more than 100 dotted parts"),
    ],
)
def test_overrides_are_parsed_with_the_same_bounds(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides({}, [override])
    assert expected in str(e.value)


def test_an_alias_bomb_in_an_override_is_refused_in_under_a_second() -> None:
    value = "{" + ", ".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)) + "}"
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="override model.args: its aliases expand to more than 100,000"):
        apply_overrides({}, ["model.args={l0: &l0 [x, x, x, x, x, x, x, x, x, x], b: " + value + "}"])
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (billion_laughs(9), "aliases expand to more than 100,000 values"),
        ("optimizer.lr: {loguniform: [0.1, 1]}\noptimizer.lr: {uniform: [0.1, 1]}\n", "duplicate key"),
        (b"optimizer.lr: {choice: [\xe9]}\n", "not UTF-8 text"),
    ],
)
def test_the_space_file_is_read_like_a_config(tmp_path: Path, text: str | bytes, expected: str) -> None:
    space = write(tmp_path, "space.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_space(space, DIGITS, [])
    assert str(e.value).startswith(str(space))
    assert expected in str(e.value)


# --- error messages show a bounded part of a user's value ---------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.name=" + "x" * 300_000,  # a literal: the value and a did-you-mean
        "trainer.epochs=[" + ", ".join(["1"] * 10_000) + "]",  # 10,000 items
        "data.mean=" + "[" * 90 + "1" + "]" * 90,  # 90 levels
        "trainer.x" + "y" * 100_000 + "=1",  # an unknown key of 100 kB
    ],
)
def test_a_huge_value_is_shown_in_a_few_hundred_characters(override: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(DIGITS, [override])
    assert len(str(e.value)) < 3 * BRIEF + 300  # key, value and the valid names


def test_aliases_sharing_one_list_print_bounded(tmp_path: Path) -> None:
    # a value that repeats itself: 99,000 references to one list of 1,000 items
    text = "l: &l [" + ", ".join(["1"] * 1000) + "]\ntrainer: {epochs: [" + ", ".join(["*l"] * 99) + "]}\n"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "c.yaml", text))
    assert len(str(e.value)) < 3 * BRIEF


def test_many_problems_are_summarised_not_listed() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(DIGITS, [f"trainer.unknown{i}=1" for i in range(200)])
    assert str(e.value).endswith("; and 192 more")


def test_an_unknown_registry_name_is_shown_bounded() -> None:
    with pytest.raises(ConfigError) as e:
        MODELS.get("y" * 1_000_000)
    assert len(str(e.value)) < 3 * BRIEF + 600  # the name, then the list of kiln's model names


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bomb.yaml", billion_laughs(9), "bomb.yaml:5: its aliases expand"),
        ("deep.yaml", "a: " + "[" * 10_000 + "]" * 10_000, "deep.yaml:1: nested more than 100"),
        ("dup.json", '{"run": {},\n"run": {}}', "dup.json: duplicate key 'run' at lines 1 and 2"),
    ],
)
def test_kiln_train_refuses_in_one_line_and_creates_nothing(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    config = write(tmp_path, name, text)
    proc = run_kiln("train", "-c", str(config), f"run.dir={tmp_path / 'run'}", check=False, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kiln: error: ")
    assert expected in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --- weight files -----------------------------------------------------------------------------------------


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


GOOD_HEADER = {
    "__metadata__": {"input_size": "3,32,32"},
    "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
}
SAFETENSORS = {
    "absurd header length": struct.pack("<Q", 2**62) + b"{}",
    "header longer than the file": struct.pack("<Q", 1000) + b"{}",
    "header not JSON": struct.pack("<Q", 5) + b"hello",
    "header not UTF-8": struct.pack("<Q", 3) + b"\xff\xfe\xfd",
    "header a list": safetensors_bytes([1, 2]),
    "metadata not strings": safetensors_bytes({"__metadata__": {"input_size": [3, 32, 32]}}),
    "empty file": b"",
    "7 bytes": b"\x01" * 7,
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS))
def test_a_bad_safetensors_header_is_one_line_for_the_preprocessing_and_the_weights(
    tmp_path: Path, case: str
) -> None:
    path = write(tmp_path, "w.safetensors", SAFETENSORS[case])
    from kiln.config import ModelConfig

    with pytest.raises(CheckpointError) as pre:  # model.pretrained's metadata: read before the weights
        weights_preprocessing(ModelConfig(pretrained=str(path)))
    with pytest.raises(CheckpointError) as weights:
        checkpoint.read_weights(path)
    assert str(pre.value).startswith(f"model.pretrained: {path} is not a readable safetensors file (")
    assert str(weights.value) == str(pre.value)


def test_a_truncated_safetensors_file_keeps_its_metadata_but_not_its_weights(tmp_path: Path) -> None:
    path = write(tmp_path, "w.safetensors", safetensors_bytes(GOOD_HEADER, b"\0" * 4))  # 8 bytes promised
    with pytest.raises(CheckpointError, match=r"--model: .*w.safetensors is not a readable safetensors file"):
        checkpoint.read_weights(path, key="--model")
    assert checkpoint.safetensors_metadata(path) == {"input_size": "3,32,32"}


def test_garbage_in_valid_metadata_is_named(tmp_path: Path) -> None:
    header = {**GOOD_HEADER, "__metadata__": {"input_size": "three,by,three"}}
    path = write(tmp_path, "w.safetensors", safetensors_bytes(header, b"\0" * 8))
    from kiln.config import ModelConfig

    with pytest.raises(
        CheckpointError, match=r"model.pretrained: .*w.safetensors: its metadata is not readable"
    ):
        weights_preprocessing(ModelConfig(pretrained=str(path)))


class Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]  (what a malicious file does: run code on load)
        return (os.system, ("touch /tmp/kiln-hostile-pwned",))


def torch_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error says), each a member of 'not a file of tensors'."""
    (tmp_path / "folder.pt").mkdir()
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:
        z.writestr("notes.txt", "a zip, but not torch's")
    write(tmp_path, "random.pt", bytes(range(256)) * 8)
    write(tmp_path, "empty.pt", b"")
    torch.save({"x": Payload()}, tmp_path / "code.pth", pickle_module=pickle)
    return {
        "folder": (tmp_path / "folder.pt", "is a folder, not a "),
        "zip": (tmp_path / "zip.pt", ": not a readable checkpoint (damaged or truncated?)"),
        "random bytes": (tmp_path / "random.pt", " is not a PyTorch file"),
        "empty": (tmp_path / "empty.pt", " is empty (0 bytes)"),
        "code": (tmp_path / "code.pth", ": refused, it holds objects other than tensors"),
        "missing": (tmp_path / "missing.pt", "not found: "),
    }


@pytest.mark.parametrize("case", ["folder", "zip", "random bytes", "empty", "code", "missing"])
def test_every_bad_torch_file_is_one_checkpoint_error_naming_the_key(tmp_path: Path, case: str) -> None:
    path, says = torch_files(tmp_path)[case]
    Path("/tmp/kiln-hostile-pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError) as weights:
        checkpoint.read_weights(path)
    with pytest.raises(CheckpointError) as ckpt:
        checkpoint.load(path, "--checkpoint")
    assert str(weights.value).startswith("model.pretrained: ")
    assert says in str(weights.value)
    assert str(ckpt.value).startswith("--checkpoint: ")
    assert says in str(ckpt.value)
    assert not Path("/tmp/kiln-hostile-pwned").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["absurd header length", "header a list"])
def test_kiln_train_with_a_bad_pretrained_file_is_one_line(tmp_path: Path, case: str) -> None:
    path = write(tmp_path, "w.safetensors", SAFETENSORS[case])
    proc = run_kiln(
        "train", "-c", str(DIGITS), f"model.pretrained={path}", f"run.dir={tmp_path / 'run'}", check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"kiln: error: model.pretrained: {path} is not a readable safetensors file")
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.slow
@pytest.mark.parametrize("case", ["zip", "random bytes", "empty"])
def test_kiln_predict_with_a_bad_model_file_is_one_line(tmp_path: Path, case: str) -> None:
    path, says = torch_files(tmp_path)[case]
    proc = run_kiln("predict", "--model", str(path), str(ROOT / "README.md"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kiln: error: --model")
    assert says in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_a_huge_registry_name_is_shown_in_a_few_hundred_characters() -> None:
    from kiln.engine.checks import check_config

    with pytest.raises(ConfigError) as e:
        check_config(load_config(DIGITS, ["data.source=" + "x" * 300_000]))
    assert len(str(e.value)) < 3 * BRIEF + 300
