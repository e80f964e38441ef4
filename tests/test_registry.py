"""The leaf registry: decorators, one error style, `module:callable`, lazy entry points. The import check
runs a fresh interpreter and is marked slow by itself; the others are unit tests."""

from __future__ import annotations

import pytest

from kiln.errors import ConfigError
from kiln.registry import Registry, resolve_callable


def test_register_get_and_unknown_names_list_the_valid_ones() -> None:
    r = Registry("widget", "thing.name")

    @r.register("gear")
    def gear() -> str:
        return "gear"

    @r.register()
    def sprocket() -> str:
        return "sprocket"

    assert r.names() == ["gear", "sprocket"]
    assert "gear" in r
    assert r.get("gear")() == "gear"
    with pytest.raises(
        ConfigError,
        match=r"thing.name: unknown widget 'gaer' — did you mean 'gear'\? \(valid: gear, sprocket\)",
    ):
        r.get("gaer")


def test_module_callable_is_imported_by_name_only() -> None:
    assert resolve_callable("math:sqrt", "k")(9) == 3
    with pytest.raises(ConfigError, match="k: 'math' is not of the form 'module:name'"):
        resolve_callable("math", "k")
    with pytest.raises(ConfigError, match=r"k \(math\): unknown name 'sqr' — did you mean 'sqrt'\?"):
        resolve_callable("math:sqr", "k")
    with pytest.raises(ConfigError, match="k: 'math:pi' is not callable"):
        resolve_callable("math:pi", "k")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_mod_xyz'"):
        Registry("widget", "k").get("no_such_mod_xyz:f")


@pytest.mark.slow  # a fresh interpreter (a subprocess)
def test_the_registry_imports_no_model_code() -> None:
    import subprocess
    import sys

    code = "import sys, kiln.registry; print(sorted(m for m in sys.modules if m.startswith('kiln.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["kiln._version", "kiln.errors", "kiln.registry"]  # noqa: S307 - our own printout
