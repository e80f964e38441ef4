"""kiln's one exception family: anything a user can fix is a KilnError, printed as one line, no traceback."""

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any

BRIEF = 200  # characters of a user's value an error message shows at most

# reprlib cuts long strings, lists and dicts in the middle and deep nesting at level 3, so a value that is
# megabytes long or shares one list a million times (YAML aliases) prints in time and space of its own
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def brief(value: Any, limit: int = BRIEF) -> str:
    """``repr(value)`` in at most ``limit`` characters, for error messages that echo a user's value."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails (e.g. an int over Python's 4300-digit limit) still gets a name
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


def clip(text: str, limit: int = BRIEF) -> str:
    """``text`` cut to ``limit`` characters (a library's message may quote a user's value whole)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def did_you_mean(name: str, valid: Iterable[str], prefix: str = "") -> str:
    """ " — did you mean 'prefix<closest>'?" for a mistyped name, or "" when nothing is close."""
    if len(name) > BRIEF:  # difflib is quadratic: a megabyte "name" is no typo of a short one
        return ""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" — did you mean '{prefix}{close[0]}'?" if close else ""


class KilnError(Exception):
    """A problem the user can fix (bad config, bad data, bad file). The CLI prints it and exits 2."""

    exit_code = 2


class ConfigError(KilnError):
    pass


class DataError(KilnError):
    pass


class CheckpointError(KilnError):
    pass


class ArtifactError(KilnError):
    """A model file or its records cannot be used (damaged, incomplete, another format)."""


class Interrupted(KilnError):
    """Stopped by Ctrl-C or SIGTERM after a checkpoint was written."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TrainingStopped(KilnError):
    """Training could not go on (e.g. a non-finite loss); the last good checkpoint is kept."""

    exit_code = 3
