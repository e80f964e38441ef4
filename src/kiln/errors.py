"""kiln's one exception family: anything the user can fix is a KilnError, printed as one line, no traceback."""

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, valid: Iterable[str], prefix: str = "") -> str:
    """ " — did you mean 'prefix<closest>'?" for a mistyped name, or "" when nothing is close."""
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


class Interrupted(KilnError):
    """Stopped by Ctrl-C or SIGTERM after a checkpoint was written."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TrainingStopped(KilnError):
    """Training could not go on (e.g. a non-finite loss); the last good checkpoint is kept."""

    exit_code = 3
