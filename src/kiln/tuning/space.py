"""The search space file: dotted config keys mapped to distributions, checked before any trial runs.

optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
data.batch_size: {choice: [32, 64, 128]}
model.args.hidden: {choice: [[128], [256, 128]]}
optimizer.momentum: {uniform: [0.8, 0.99]}
trainer.epochs: {randint: [3, 8]}          # both ends included
optimizer.name: {grid: [sgd, adamw]}       # every value, times --samples
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kiln.config import Config, apply_overrides, read_config_file, validate
from kiln.config.reader import read_mapping
from kiln.engine.checks import check_config
from kiln.errors import ConfigError, brief, clip, did_you_mean

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")


def override(key: str, value: Any) -> str:
    """A `key=value` override whose value YAML parses back to exactly ``value``."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def _check_one(key: str, spec: Any) -> tuple[str, list[Any]]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"search space: {key}: expected one distribution like {{loguniform: [1e-4, 1e-1]}}, "
            f"got {brief(spec)} (kinds: {', '.join(KINDS)})"
        )
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        hint = did_you_mean(str(kind), KINDS)
        raise ConfigError(
            f"search space: {key}: unknown distribution {brief(kind)}{hint} (valid: {', '.join(KINDS)})"
        )
    if not isinstance(args, list) or not args:
        raise ConfigError(f"search space: {key}: {kind} needs a list, e.g. {kind}: [a, b], got {brief(args)}")
    if kind in ("loguniform", "uniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
            raise ConfigError(
                f"search space: {key}: {kind} needs [low, high] numbers with low < high, got {brief(args)}"
            )
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"search space: {key}: loguniform needs low > 0, got {brief(args[0])}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"search space: {key}: randint needs integers, got {brief(args)}")
        return kind, [args[0], args[1]]  # both ends are valid values
    return kind, list(args)


def load_space(
    path: str | Path, config_path: str | Path, base_overrides: list[str]
) -> dict[str, tuple[str, list[Any]]]:
    """Read and check a space file against the config: every key must exist and every value it can take
    must validate, with the same one-line errors as `kiln train`."""
    path = Path(path)
    raw = read_mapping(path, "--space file")  # the config reader's bounds and one-line errors
    if not raw:
        raise ConfigError(f"{path}: expected a mapping of config keys to distributions")
    space = {str(k): _check_one(clip(str(k), 120), v) for k, v in raw.items()}
    base = apply_overrides(read_config_file(config_path), base_overrides)
    check_config(
        validate(base)
    )  # the names it uses (loss, metrics, monitors, ...), as kiln train checks them
    for key, (_, values) in space.items():
        for value in values:  # each end / choice on its own, the rest of the config as given
            cfg = validate(apply_overrides(base, [override(key, value)]))
            if isinstance(value, str):  # a name: a loss, a model, a metric...
                check_config(cfg)
    return space


def resolved(config_path: str | Path, overrides: list[str]) -> Config:
    return validate(apply_overrides(read_config_file(config_path), overrides))
