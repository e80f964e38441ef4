"""The one reader of the files and values a user hands kiln as text: config files (YAML or JSON), the tune
search space file and each ``key=value`` override's value.

A config is a few kB; whatever is not one is refused with one line naming the file (and the line where it is
known) before it can cost time, memory or a traceback: a folder, an unreadable or missing file, more than
``MAX_BYTES``, bytes that are not UTF-8, nesting deeper than ``MAX_DEPTH`` (PyYAML's composer and
constructor, pydantic and deepcopy all recurse once per level), YAML aliases that expand to more than
``MAX_NODES`` values or ``MAX_EXPANDED`` characters (a "billion laughs" file is a few hundred bytes), a
recursive alias, and a key given twice in one mapping (YAML and ``json.loads`` both keep the last one
silently).
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.errors import ConfigError, brief, clip

MAX_BYTES = 4 * 2**20  # 4 MiB; kiln's example configs are 0.3-2 kB
MAX_DEPTH = 100  # levels of nesting; the deepest real config has 5
MAX_NODES = 100_000  # values with aliases expanded (kiln's largest example config has ~150)
MAX_EXPANDED = 4 * MAX_BYTES  # characters of scalars with aliases expanded (one long string aliased often)


@dataclass(frozen=True)
class Source:
    """Where a text came from, for error messages: a file (which has lines) or an override (one line)."""

    name: str
    has_lines: bool = True

    def at(self, line: int | None) -> str:
        return f"{self.name}:{line}" if self.has_lines and line else self.name


class _Refused(yaml.YAMLError):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


class _DuplicateKey(_Refused):
    pass


def read_text(path: str | Path, what: str = "config file") -> str:
    """The file's text: UTF-8, at most ``MAX_BYTES``; a missing, unreadable or special file is refused."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{what} {path} is a folder; give the file in it")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a pipe is `-c <(...)`; a device never ends
        raise ConfigError(f"{what} {path} is not a regular file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)  # never more: the size on disk may be a lie (/proc) or endless
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(
            f"{path}: more than {MAX_BYTES // 2**20} MiB, too large for a {what}; is it the right file?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no Python objects from tags) that refuses deep nesting while composing (the
    composer recurses per level) and a key given twice in one mapping while constructing."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then own keys: overriding is its use
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: SafeConstructor refuses it with its own message
                continue
            if seen is not None:
                raise _DuplicateKey(
                    f"duplicate key {brief(key)} at lines {seen} and {line}; keep one of them"
                )
            first_line[key] = line
        return super().construct_mapping(node, deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node) -> None:
    """Count the values, the characters and the levels ``root`` has once every alias is expanded, without
    expanding any: each node is measured once (an alias is the very node of its anchor), so a billion laughs
    costs its few hundred nodes. Iterative: an alias chain may nest far deeper than Python's recursion."""
    measured: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, characters, levels) expanded
    open_nodes: set[int] = set()  # entered and not yet measured: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        line = node.start_mark.line + 1
        if children_done:
            kids = [measured[id(k)] for k in _children(node)]
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            values, chars = 1 + sum(k[0] for k in kids), own + sum(k[1] for k in kids)
            levels = 1 + max((k[2] for k in kids), default=0)
            measured[id(node)] = values, chars, levels
            open_nodes.discard(id(node))
            if values > MAX_NODES or chars > MAX_EXPANDED:
                raise _Refused(
                    f"its aliases expand to more than {MAX_NODES:,} values or {MAX_EXPANDED // 2**20} MiB "
                    "(an alias bomb?); write the values out, or alias fewer",
                    line,
                )
            if levels > MAX_DEPTH:
                raise _Refused(f"its aliases nest more than {MAX_DEPTH} levels deep", line)
        elif id(node) in open_nodes:
            raise _Refused(
                "a recursive alias (an anchor used inside itself); a config cannot contain itself", line
            )
        elif id(node) not in measured:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in _children(node) if id(k) not in measured)


def _check_nesting(text: str) -> None:
    """Refuse deep nesting with libyaml's event parser (C) where PyYAML has it: it finds 10,000 open
    brackets in ~1 ms, where PyYAML's own scanner first looks ahead through 1,000 of them (0.3 s, 1 s on a
    busy 2-core machine). Other errors are left to the loader, which words them as PyYAML does."""
    fast = getattr(yaml, "CBaseLoader", None)
    if fast is None:
        return
    parser, depth = fast(text), 0
    try:  # libyaml reads str lazily: its own refusals (control characters) come from check_event too
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark.line + 1)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if "nesting depth" in str(getattr(e, "problem", "")) and mark:  # libyaml's own bound: 1,000 levels
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", mark.line + 1) from None
    finally:
        parser.dispose()


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` with the bounds above (PyYAML's and kiln's errors raised as they are)."""
    _check_nesting(text)
    loader = _BoundedLoader(text)  # its reader refuses control characters at once
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)  # before constructing: construction is what a bomb makes expensive
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml(text: str, source: Source) -> Any:
    """``yaml.safe_load(text)`` with the bounds above, every failure one line; None for an empty text."""
    try:
        return _load_yaml(text)
    except _Refused as e:
        raise ConfigError(f"{source.at(e.line)}: {e.message}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or type(e).__name__
        raise ConfigError(
            f"{source.at(mark.line + 1 if mark else None)}: not valid YAML: {clip(problem)}"
        ) from None
    except (yaml.YAMLError, ValueError) as e:  # ReaderError; ValueError: an int over 4300 digits, a bad date
        raise ConfigError(
            f"{source.name}: not valid YAML: {clip(str(e).splitlines()[0].split(';')[0])}"
        ) from None


class _JsonDuplicate(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonDuplicate(key)
        out[key] = value
    return out


def _json_duplicate_lines(text: str) -> str | None:
    """The duplicate-key message with both lines, from PyYAML's composer, which reads JSON as YAML once its
    tabs are spaces (a tab in valid JSON is whitespace between tokens); None where it cannot tell."""
    try:
        _load_yaml(text.replace("\t", " "))
    except _DuplicateKey as e:
        return e.message
    except (yaml.YAMLError, ValueError):  # JSON that YAML 1.1 reads otherwise (rare escapes)
        return None
    return None


def _json_depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level <= MAX_DEPTH and isinstance(item, (dict, list)):
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(text: str, source: Source) -> Any:
    """``json.loads(text)`` with the bounds above (JSON has no aliases)."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_pairs)
    except _JsonDuplicate as e:
        where = _json_duplicate_lines(text) or f"duplicate key {brief(e.args[0])}; keep one of them"
        raise ConfigError(f"{source.name}: {where}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source.at(e.lineno)}: not valid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ConfigError(f"{source.name}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # an int over Python's 4300-digit limit
        raise ConfigError(f"{source.name}: not valid JSON: {clip(str(e).split(';')[0])}") from None
    if _json_depth(value) > MAX_DEPTH:
        raise ConfigError(f"{source.name}: nested more than {MAX_DEPTH} levels deep")
    return value


def read_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML or JSON file (by its suffix) whose top level is a mapping; {} for an empty file."""
    path = Path(path).expanduser()
    text, source = read_text(path, what), Source(str(path))
    raw = parse_json(text, source) if path.suffix == ".json" else parse_yaml(text, source)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_value(text: str, key: str) -> Any:
    """One override's value, parsed as YAML with the bounds of a file (``model.args={hidden: [64]}``)."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"override {key}: its value is more than {MAX_BYTES // 2**20} MiB")
    return parse_yaml(text, Source(f"override {key}", has_lines=False))
