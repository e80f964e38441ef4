"""What the graph exporters (``torch.export`` for .pt2, the dynamo ONNX exporter) have in common: they log
and print a lot while they work, and wrap the real reason for a failure in generic errors."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in out and len(out) < 10:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def first_line(error: BaseException) -> str:
    """The first line of the root cause (exporters wrap the real reason in generic 'step 1/3' errors)."""
    root = _chain(error)[-1]
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(root).splitlines() if ln.strip()]
    return (lines[0] if lines else type(root).__name__)[:300]


def data_dependent_hint(error: BaseException) -> str:
    text = " ".join(f"{type(c).__name__} {c}" for c in _chain(error))
    if "data-dependent" in text or "DataDependent" in text:
        return (
            "; the model branches on tensor values, which torch.export cannot capture: use "
            "--format torchscript --method script, or rewrite the branch with torch.cond / torch.where"
        )
    return ""


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """torch.export logs guard failures and graph dumps at WARNING through its own loggers, and the ONNX
    exporter prints progress: the user gets kiln's one-line error or result instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
