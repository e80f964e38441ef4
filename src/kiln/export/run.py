"""``export_checkpoint``: checkpoint -> artifact + preprocess.json, loaded back, verified -> export.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from kiln.export import TOLERANCE, ExportError, verify
from kiln.export.base import ExportOptions, Saved
from kiln.export.formats import get_format
from kiln.export.record import preprocess_record
from kiln.models.restore import Restored, restore
from kiln.paths import RunDir, output_dir


def _check_options(opts: ExportOptions) -> None:
    if opts.max_batch_size < 1:
        raise ExportError(f"--max-batch-size {opts.max_batch_size}: must be at least 1")
    if opts.name is not None and (
        not opts.name or Path(opts.name).name != opts.name or opts.name in (".", "..")
    ):
        raise ExportError(f"--name {opts.name!r}: give a plain file/model name; choose the folder with --out")


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    config: str | Path | None = None,
    tolerance: float = TOLERANCE,
    opts: ExportOptions | None = None,
) -> dict[str, Any]:
    """Write ``checkpoint`` in format ``fmt`` under ``out``, verify it and return the report (export.json)."""
    t0 = time.perf_counter()
    form, opts = get_format(fmt), opts or ExportOptions()
    _check_options(opts)
    contents = "any" if form.shares_its_folder else "kiln"
    if out:  # the user's folder is checked before anything is read; the default is in the run folder
        output_dir(out, "--out", contents)
    restored = restore(checkpoint, overrides, config)
    model = restored.model.float().eval()
    out_dir = Path(out) if out else RunDir.of_checkpoint(checkpoint).export_dir(fmt)
    output_dir(out_dir, "--out", contents)
    output_dir(form.own_folder(out_dir, restored.recipe, opts), "--out")
    batches = verify.build_batches(restored.config, restored.preprocess, opts.max_batch_size)
    saved = form.save(model, batches.example, out_dir, restored.recipe, opts)
    record = preprocess_record(restored, *saved.names, str(saved.path.relative_to(saved.folder)))
    (saved.folder / "preprocess.json").write_text(json.dumps(record, indent=2))
    check = verify.verify(model, batches, saved.run, tolerance)
    report = _report(fmt, checkpoint, restored, saved, opts, check)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report_file = saved.folder / "export.json"
    report["files"] = sorted(  # this export's files (in a Triton repository: its model folder's)
        {str(p.relative_to(out_dir)) for p in saved.folder.rglob("*") if p.is_file()}
        | {str(report_file.relative_to(out_dir))}
    )
    report_file.write_text(json.dumps(report, indent=2))
    verify.raise_if_failed(check, str(saved.path))
    return report


def _report(
    fmt: str,
    checkpoint: str | Path,
    restored: Restored,
    saved: Saved,
    opts: ExportOptions,
    check: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": fmt,
        "variant": saved.variant,
        "artifact": str(saved.path),
        "folder": str(saved.folder),
        "checkpoint": str(checkpoint),
        "model": restored.config.model.name,
        "method": saved.details.get("method"),
        "backend": saved.details.get("backend"),
        "max_batch_size": opts.max_batch_size,
        "input_shape": ["batch", *restored.preprocess.input_shape],
        "num_classes": len(restored.classes),
        "torch_version": torch.__version__,
        "size_bytes": saved.path.stat().st_size,
        "loaded_by": saved.loaded_by,
        "notes": saved.notes,
        **check,
    }
