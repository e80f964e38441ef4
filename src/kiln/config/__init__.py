"""The one config: loaded from YAML/JSON plus `key=value` overrides into the frozen pydantic tree of
``schema.py``. Every validation error becomes one line naming the dotted key, what is wrong and the
closest valid name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kiln.atomic import write_atomic
from kiln.config.schema import (
    EPOCH_METRICS,
    AugmentConfig,
    CallbackSpec,
    CheckpointConfig,
    Config,
    CsvConfig,
    DataConfig,
    EarlyStoppingConfig,
    EmaConfig,
    ErasingConfig,
    JitterConfig,
    LoggingConfig,
    LookaheadConfig,
    ModelConfig,
    OptimizerConfig,
    ParamGroupConfig,
    ResizedCropConfig,
    RunConfig,
    SchedulerConfig,
    TrainerConfig,
    UnfreezeConfig,
    WandbConfig,
    epoch_metric_names,
)
from kiln.errors import ConfigError, did_you_mean

__all__ = [
    "EPOCH_METRICS",
    "AugmentConfig",
    "CallbackSpec",
    "CheckpointConfig",
    "Config",
    "CsvConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "EmaConfig",
    "ErasingConfig",
    "JitterConfig",
    "LoggingConfig",
    "LookaheadConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParamGroupConfig",
    "ResizedCropConfig",
    "RunConfig",
    "SchedulerConfig",
    "TrainerConfig",
    "UnfreezeConfig",
    "WandbConfig",
    "apply_overrides",
    "dump_config",
    "epoch_metric_names",
    "load_config",
    "read_config_file",
    "validate",
]


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        # safe_load: a config can never construct Python objects (no !!python tags)
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=value`` overrides applied (value parsed as YAML)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value (e.g. trainer.epochs=3)")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for 'did you mean')."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif inner:
            model = inner[0]
        else:
            return None
    return model


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p) and p != "function-after")
    key = ".".join(str(p) for p in loc) or "config"
    if err["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1])
        valid = sorted(owner.model_fields) if owner else []
        hint = did_you_mean(str(loc[-1]), valid, "".join(f"{p}." for p in loc[:-1]))
        return f"{key}: unknown key{hint} (valid: {', '.join(valid)})"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: its message names its own keys
        return msg
    if err["type"] == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in allowed.replace(" or ", ", ").split(",")]
        hint = did_you_mean(str(err.get("input")), choices)
        return f"{key}: {err.get('input')!r} is not allowed{hint} (valid: {', '.join(choices)})"
    return f"{key}: {msg} (got {err.get('input')!r})" if "input" in err and loc else f"{key}: {msg}"


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = sorted({_describe(err) for err in e.errors()})
        raise ConfigError("invalid config: " + "; ".join(lines)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    raw = read_config_file(path) if path else {}
    return validate(apply_overrides(raw, list(overrides)))


def dump_config(cfg: Config, path: Path) -> None:
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
