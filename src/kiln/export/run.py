"""``export_checkpoint``: checkpoint -> artifact + preprocess.json, loaded back, verified -> export.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from kiln.export import TOLERANCE, ExportError
from kiln.export import verify as V
from kiln.export.base import ExportOptions
from kiln.export.formats import get_format
from kiln.export.triton import model_name
from kiln.models.restore import Restored, restore
from kiln.paths import RunDir, output_dir

PREPROCESS_FORMAT = "kiln-preprocess/1"
GEOMETRY = {  # how a decoded image (EXIF orientation applied, RGB or L) becomes the model's input
    "none": "the image as it is (every training image had image_size); kiln predict resizes others to it",
    "squash": "resized to image_size ({s.interpolation}, antialiased), aspect ratio not kept",
    "crop": "shorter side resized to resize_size ({s.interpolation}, antialiased), then the centre image_size",
}


def preprocess_record(r: Restored, input_name: str, output_name: str, artifact: str) -> dict[str, Any]:
    """Everything a deployment needs to feed the model what it saw in training, in plain JSON."""
    pre = r.preprocess
    c, spec = pre.spec.channels, pre.spec
    return {
        "format": PREPROCESS_FORMAT,
        "artifact": artifact,
        "model": r.config.model.name,
        "input": {
            "name": input_name,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", *pre.input_shape],
        },
        "output": {
            "name": output_name,
            "dtype": "float32",
            "shape": ["batch", len(r.classes)],
            "meaning": "logits (unnormalised class scores); softmax gives probabilities",
        },
        "in_channels": c,
        "image_size": list(spec.size),  # [H, W]
        "channel_order": "RGB" if c == 3 else "L (grayscale, ITU-R 601-2 luma)",
        **spec.record(),
        "geometry": GEOMETRY[spec.resize].format(s=spec),
        "scale": "uint8 0-255 -> float 0-1 (x / 255)",
        "mean": list(pre.mean),
        "std": list(pre.std),
        "normalize": "(x / 255 - mean[c]) / std[c] per channel",
        "classes": list(r.classes),
        "class_names": list(r.class_names),  # what predict, Triton's labels.txt and serve show
    }


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    config: str | Path | None = None,
    tolerance: float = TOLERANCE,
    **options: Any,
) -> dict[str, Any]:
    """Write ``checkpoint`` in format ``fmt`` under ``out``, verify it and return the report (export.json).
    ``options``: the fields of ``ExportOptions`` (name, max_batch_size, method, backend, ...)."""
    t0 = time.perf_counter()
    form, opts = get_format(fmt), ExportOptions(**options)
    if opts.max_batch_size < 1:
        raise ExportError(f"--max-batch-size {opts.max_batch_size}: must be at least 1")
    if opts.name is not None and (
        not opts.name or Path(opts.name).name != opts.name or opts.name in (".", "..")
    ):
        raise ExportError(f"--name {opts.name!r}: give a plain file/model name; choose the folder with --out")
    if out:  # the user's folder is checked before anything is read; the default is in the run folder
        output_dir(out, "--out", "any" if fmt == "triton" else "kiln")
    r = restore(checkpoint, overrides, config)
    model = r.model.float().eval()
    out_dir = Path(out) if out else RunDir.of_checkpoint(checkpoint).export_dir(fmt)
    output_dir(out_dir, "--out", "any" if fmt == "triton" else "kiln")
    if fmt == "triton":  # kiln owns the model folder REPO/NAME; REPO may hold the user's other models
        output_dir(out_dir / model_name(opts.name or r.config.run.name), "--out")
    batches = V.build_batches(r.config, r.preprocess, opts.max_batch_size)
    recipe = {
        "model": {"name": r.config.model.name, "args": dict(r.config.model.args)},
        "imports": list(r.config.imports),
        "classes": list(r.classes),
        "preprocess": r.preprocess.to_json(),
        "class_names": list(r.class_names),
        "run_name": r.config.run.name,
    }
    saved = form.save(model, batches.example, out_dir, recipe, opts)
    record = preprocess_record(r, *saved.names, str(saved.path.relative_to(saved.folder)))
    (saved.folder / "preprocess.json").write_text(json.dumps(record, indent=2))
    check = V.verify(model, batches, saved.run, tolerance)
    in_shape = list(r.preprocess.input_shape)
    report: dict[str, Any] = {
        "format": fmt,
        "artifact": str(saved.path),
        "checkpoint": str(checkpoint),
        "model": r.config.model.name,
        "method": saved.details.get("method"),
        "backend": saved.details.get("backend"),
        "max_batch_size": opts.max_batch_size,
        "input_shape": ["batch", *in_shape],
        "num_classes": len(r.classes),
        "torch_version": torch.__version__,
        "size_bytes": saved.path.stat().st_size,
        "loaded_by": saved.loaded_by,
        "notes": saved.notes,
        **check,
    }
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report_file = saved.folder / "export.json"
    report["files"] = sorted(  # this export's files (in a Triton repository: its model folder's)
        {str(p.relative_to(out_dir)) for p in saved.folder.rglob("*") if p.is_file()}
        | {str(report_file.relative_to(out_dir))}
    )
    report_file.write_text(json.dumps(report, indent=2))
    V.raise_if_failed(check, str(saved.path))
    return report
