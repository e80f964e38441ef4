"""The config: overrides, JSON, one-line errors naming the key, frozen values, safe YAML. One test runs
`kiln train` as a subprocess and is marked slow by itself; the others are unit tests."""

from pathlib import Path

import pytest

from kiln.config import Config, load_config
from kiln.errors import ConfigError
from tests.conftest import ROOT, run_kiln


def test_six_documented_override_keys(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            "trainer.epochs=3",
            "optimizer.lr=0.01",
            "data.batch_size=128",
            "data.root=/some/path",
            f"run.dir={tmp_path}",
            "run.seed=1",
        ],
    )
    assert cfg.trainer.epochs == 3
    assert cfg.optimizer.lr == 0.01
    assert cfg.data.batch_size == 128
    assert cfg.data.root == "/some/path"
    assert cfg.run.dir == str(tmp_path)
    assert cfg.run.seed == 1
    assert cfg.run_dir == tmp_path


def test_json_config(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"trainer": {"epochs": 2}, "model": {"name": "mlp", "args": {"hidden": [32]}}}')
    cfg = load_config(p)
    assert cfg.trainer.epochs == 2
    assert cfg.model.args == {"hidden": [32]}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.epochz=3", "trainer.epochz: unknown key — did you mean 'trainer.epochs'?"),
        ("optimizer.lr=-1", "optimizer.lr: Input should be greater than 0"),
        ("traner.epochs=3", "traner: unknown key — did you mean 'trainer'?"),
        ("optimizer.name=adamm", "did you mean 'adam'?"),
        ("trainer.epochs=abc", "trainer.epochs: should be an integer or a number (got 'abc')"),
    ],
)
def test_bad_values_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/digits.yaml", [override])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_frozen() -> None:
    with pytest.raises(Exception):  # noqa: B017  (pydantic's frozen error)
        Config().trainer.epochs = 3  # type: ignore[misc]


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("run: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    assert not Path("pwned").exists()


@pytest.mark.slow  # a `kiln train` subprocess
def test_cli_config_error_is_one_line_without_traceback() -> None:
    proc = run_kiln("train", "-c", str(ROOT / "configs/digits.yaml"), "trainer.epochz=3", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "trainer.epochz" in proc.stderr
    assert "trainer.epochs" in proc.stderr


def test_all_example_configs_validate() -> None:
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(p)
