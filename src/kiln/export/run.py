"""``export_checkpoint``: checkpoint -> artifact + preprocess.json, loaded back and verified -> export.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from kiln.export import FORMATS, INPUT_NAME, OUTPUT_NAME, TOLERANCE, ExportError
from kiln.export import verify as V
from kiln.models.restore import Restored, restore

PREPROCESS_FORMAT = "kiln-preprocess/1"


def preprocess_record(r: Restored, input_name: str, output_name: str, artifact: str) -> dict[str, Any]:
    """Everything a deployment needs to feed the model what it saw in training, in plain JSON."""
    pre = r.preprocess
    c = int(pre["in_channels"])
    return {
        "format": PREPROCESS_FORMAT,
        "artifact": artifact,
        "model": r.config.model.name,
        "input": {
            "name": input_name,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", c, *pre["image_size"]],
        },
        "output": {
            "name": output_name,
            "dtype": "float32",
            "shape": ["batch", len(r.classes)],
            "meaning": "logits (unnormalised class scores); softmax gives probabilities",
        },
        "in_channels": c,
        "image_size": list(pre["image_size"]),  # [H, W]
        "channel_order": "RGB" if c == 3 else "L (grayscale, ITU-R 601-2 luma)",
        "resize": "bilinear to image_size when the image differs",
        "scale": "uint8 0-255 -> float 0-1 (x / 255)",
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
        "normalize": "(x / 255 - mean[c]) / std[c] per channel",
        "classes": list(r.classes),
    }


def export_checkpoint(
    checkpoint: str | Path, fmt: str, out: str | Path | None = None, name: str | None = None,
    max_batch_size: int = 64, method: str = "trace", backend: str = "torchscript",
    overrides: list[str] | None = None, config: str | Path | None = None, tolerance: float = TOLERANCE,
    allow_tracer_warnings: bool = False, instance_kind: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """Write ``checkpoint`` in format ``fmt`` under ``out``, verify it and return the report (export.json)."""
    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if max_batch_size < 1:
        raise ExportError(f"--max-batch-size {max_batch_size}: must be at least 1")
    if fmt == "safetensors" and name not in (None, "model"):  # the loader looks for model.json beside it
        raise ExportError("--name does not apply to --format safetensors (files are model.safetensors/.json)")
    if name is not None and (not name or Path(name).name != name or name in (".", "..")):
        raise ExportError(f"--name {name!r}: give a plain file/model name; choose the folder with --out")
    r = restore(checkpoint, overrides, config)
    model = r.model.float().eval()
    out_dir = Path(out) if out else Path(checkpoint).resolve().parent.parent / f"export-{fmt}"
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = V.build_batches(r.config, r.preprocess, max_batch_size)
    in_shape = [int(r.preprocess["in_channels"]), *map(int, r.preprocess["image_size"])]
    notes: list[str] = []
    names = (INPUT_NAME, OUTPUT_NAME)
    stem = name or "model"
    loaded_by: dict[str, Any] = {}

    if fmt == "torchscript":
        from kiln.export import torchscript as ts

        path = out_dir / f"{stem}.pt"
        notes += ts.save(model, batches.example, path, method, allow_tracer_warnings)
        names = ("input 0 (TorchScript tensors are positional)", "output 0")
        run_many = _fresh(path, loaded_by)
    elif fmt == "export":
        from kiln.export.program import load_pt2, save_pt2

        path = out_dir / f"{stem}.pt2"
        notes += save_pt2(model, batches.example, path)
        run_many = V.torch_runner(load_pt2(path))
        loaded_by["loader"] = "torch.export.load"
    elif fmt == "onnx":
        from kiln.export import onnx as ox

        path = out_dir / f"{stem}.onnx"
        notes += ox.save(model, batches.example, path)
        runner = ox.Runner(path, INPUT_NAME, OUTPUT_NAME)
        run_many = V.per_batch(runner)
        loaded_by["loader"] = f"onnxruntime {runner.version} (CPUExecutionProvider)"
    elif fmt == "safetensors":
        from kiln.export.program import load_safetensors, save_safetensors

        path = out_dir / f"{stem}.safetensors"
        recipe = {"model": {"name": r.config.model.name, "args": dict(r.config.model.args)},
                  "imports": list(r.config.imports), "classes": list(r.classes), "preprocess": dict(r.preprocess),
                  "torch_version": torch.__version__}  # fmt: skip
        notes += save_safetensors(model, path, recipe)
        run_many = V.torch_runner(load_safetensors(path)[0])
        loaded_by["loader"] = "kiln: model rebuilt from model.json, weights from safetensors"
    else:  # triton
        path, run_many, names = _triton(r, model, batches, out_dir, name, backend, method, max_batch_size,
                                        allow_tracer_warnings, instance_kind, in_shape, notes, loaded_by)  # fmt: skip

    artifact_dir = path.parent.parent if fmt == "triton" else path.parent
    pre_record = preprocess_record(r, names[0], names[1], str(path.relative_to(artifact_dir)))
    (artifact_dir / "preprocess.json").write_text(json.dumps(pre_record, indent=2))
    check = V.verify(model, batches, run_many, tolerance)
    report: dict[str, Any] = {
        "format": fmt, "artifact": str(path), "checkpoint": str(checkpoint), "model": r.config.model.name,
        "method": method if fmt == "torchscript" or (fmt == "triton" and backend == "torchscript") else None,
        "backend": backend if fmt == "triton" else None, "max_batch_size": max_batch_size,
        "input_shape": ["batch", *in_shape], "num_classes": len(r.classes), "torch_version": torch.__version__,
        "size_bytes": path.stat().st_size, "loaded_by": loaded_by, "notes": notes, **check,
        "files": sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()),
    }  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report_file = str((artifact_dir / "export.json").relative_to(out_dir))
    report["files"] = sorted({*report["files"], report_file})
    (artifact_dir / "export.json").write_text(json.dumps(report, indent=2))
    V.raise_if_failed(check, str(path))
    return report


def _fresh(path: Path, loaded_by: dict[str, Any]) -> V.RunMany:
    from kiln.export.torchscript import run_fresh

    def run_many(inputs: dict[str, Any]) -> dict[str, Any]:
        outputs, info = run_fresh(path, inputs)
        loaded_by.update(loader="torch.jit.load in a fresh Python process (python -I, kiln not imported)",
                         process_torch=info["torch"], process_python=info["python"])  # fmt: skip
        return outputs

    return run_many


def _triton(r: Restored, model: torch.nn.Module, batches: V.Batches, repo: Path, name: str | None, backend: str,
            method: str, max_batch_size: int, allow_tracer_warnings: bool, instance_kind: str,
            in_shape: list[int], notes: list[str], loaded_by: dict[str, Any]) -> tuple[Path, V.RunMany, tuple[str, str]]:  # fmt: skip
    from kiln.export import triton as tr

    tname = tr.model_name(name or r.config.run.name)
    model_dir, path = tr.write_repository(
        repo, tname, backend, in_shape, r.classes, max_batch_size, instance_kind
    )
    if backend == "torchscript":
        from kiln.export import torchscript as ts

        notes += ts.save(model, batches.example, path, method, allow_tracer_warnings)
    else:
        from kiln.export import onnx as ox

        notes += ox.save(model, batches.example, path)
    # parse config.pbtxt as Triton's ModelConfig and cross-check it against the file (in-process probe)
    m = tr.check_model_dir(model_dir, run_probe=True)
    notes.append(f"config.pbtxt parsed as Triton ModelConfig and checked: {m.config.platform}, "
                 f"max_batch_size {m.config.max_batch_size}, {m.input_name} {m.in_shape} -> {m.output_name} "
                 f"[{len(m.classes)}], labels {tr.LABELS}")  # fmt: skip
    if backend == "torchscript":
        run_many = _fresh(path, loaded_by)
    else:
        from kiln.export.onnx import Runner

        runner = Runner(path, m.input_name, m.output_name)
        run_many = V.per_batch(runner)
        loaded_by["loader"] = f"onnxruntime {runner.version} (CPUExecutionProvider), names from config.pbtxt"
    return path, run_many, (m.input_name, m.output_name)
