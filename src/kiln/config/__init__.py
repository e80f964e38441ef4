"""The one config: loaded from YAML/JSON plus `key=value` overrides into the frozen pydantic tree of
``schema.py``. Every validation error becomes one line naming the dotted key, what is wrong and the
closest valid name.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kiln.atomic import write_atomic
from kiln.config.reader import MAX_DEPTH, parse_value, read_mapping
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
from kiln.errors import ConfigError, brief, clip, did_you_mean

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
    """A YAML or JSON config file as a dict, bounded and checked by ``reader`` (one line per problem)."""
    return read_mapping(path, "config file")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=value`` overrides applied (value parsed as YAML)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {brief(item)} is not key=value (e.g. trainer.epochs=3)")
        parts = key.split(".")
        if len(parts) > MAX_DEPTH:
            raise ConfigError(f"override {clip(key)}: more than {MAX_DEPTH} dotted parts")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = parse_value(value, clip(key)) if value != "" else None
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
    key = clip(".".join(str(p) for p in loc), 120) or "config"
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
        return f"{key}: {brief(err.get('input'))} is not allowed{hint} (valid: {', '.join(choices)})"
    return f"{key}: {msg} (got {brief(err.get('input'))})" if "input" in err and loc else f"{key}: {msg}"


_SCALARS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "none": "null",
}


def _merge_unions(errors: list[Any]) -> list[dict[str, Any]]:
    """``epochs: int | float`` given 'abc' fails once per member (``trainer.epochs.int``, ``...float``):
    one error, "trainer.epochs: should be an integer or a number"."""
    merged: dict[tuple, dict[str, Any]] = {}
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        if not loc or loc[-1] not in _SCALARS:
            out.append(err)
            continue
        first = merged.setdefault(loc[:-1], {**err, "loc": loc[:-1], "members": []})
        first["members"].append(_SCALARS[str(loc[-1])])
    for err in merged.values():
        if len(err["members"]) > 1:
            err = {**err, "type": "union", "msg": f"should be {' or '.join(err['members'])}"}
        out.append(err)
    return out


SHOWN = 8  # problems one error line lists (a file of 10,000 unknown keys is one mistake, shown 8 times)


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = sorted({_describe(err) for err in _merge_unions(e.errors())})
        more = f"; and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
        raise ConfigError("invalid config: " + "; ".join(lines[:SHOWN]) + more) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    raw = read_config_file(path) if path else {}
    return validate(apply_overrides(raw, list(overrides)))


def dump_config(cfg: Config, path: Path) -> None:
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
