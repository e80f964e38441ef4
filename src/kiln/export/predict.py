"""``kiln predict``: run a checkpoint or any kiln export on image files with the recorded preprocessing.

Unreadable files are reported one by one (stderr and the output) and the rest still run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.config import AugmentConfig
from kiln.console import warn as console_warn
from kiln.data import preprocess_spec
from kiln.data.augment import BatchTransform
from kiln.data.decode import open_image
from kiln.data.sources import IMAGE_EXTENSIONS
from kiln.errors import KilnError
from kiln.export import ArtifactError
from kiln.export.base import Runner, torch_runner
from kiln.export.program import load_safetensors
from kiln.models.restore import restore


@dataclass
class Loaded:
    run: Runner
    preprocess: dict[str, Any]  # in_channels, image_size [H, W], mean, std
    classes: list[str]
    kind: str
    path: Path


def _read_preprocess(artifact: Path) -> dict[str, Any]:
    """preprocess.json in a model folder (Triton), beside a model file, or one folder up."""
    for d in [artifact] if artifact.is_dir() else [artifact.parent, artifact.parent.parent]:
        p = d / "preprocess.json"
        if p.is_file():
            try:
                pre = json.loads(p.read_text())
                _ = (
                    int(pre["in_channels"]),
                    list(pre["image_size"]),
                    list(pre["mean"]),
                    list(pre["std"]),
                    pre["classes"],
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ArtifactError(f"{p}: not a kiln preprocess.json ({type(e).__name__}: {e})") from None
            return pre
    raise ArtifactError(f"{artifact}: no preprocess.json beside it; kiln export writes one with the input size, "
                        "mean/std and class names. Copy it along with the model")  # fmt: skip


def load_any(path: str | Path, trust: bool = False) -> Loaded:
    """A runner for a kiln checkpoint, any kiln export file or folder (TorchScript, .pt2, ONNX, safetensors,
    a Triton model folder or a repository holding one model)."""
    from kiln.export.formats import FORMATS

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"--model {p}: no such file or folder")
    if p.is_dir():
        p = _model_in(p)
    for form in FORMATS.values():
        if form.claims(p):
            if form.name == "safetensors":  # the recipe beside the weights has the preprocessing
                model, recipe = load_safetensors(p)
                return Loaded(
                    torch_runner(model), dict(recipe["preprocess"]), list(recipe["classes"]), form.name, p
                )
            run = form.load(p, trust)
            pre = _read_preprocess(p)
            return Loaded(run, pre, list(pre["classes"]), form.name, p)
    r = restore(p)  # a kiln checkpoint: torch.load(weights_only=True) only
    return Loaded(torch_runner(r.model.float()), dict(r.preprocess), list(r.classes), "checkpoint", p)


def _model_in(p: Path) -> Path:
    """The model a folder holds: itself (a Triton model folder), its one Triton model, or its model file."""
    if (p / "config.pbtxt").is_file():
        return p
    models = [d for d in sorted(p.iterdir()) if (d / "config.pbtxt").is_file()]
    if len(models) == 1:  # a Triton repository holding one model
        return models[0]
    if models:
        raise ArtifactError(f"{p}: a Triton repository with {len(models)} models; pass one of "
                            f"{', '.join(str(m) for m in models[:5])}")  # fmt: skip
    for stem in ("model.safetensors", "model.onnx", "model.pt", "model.pt2"):  # an export folder's one model
        if (p / stem).is_file():
            return p / stem
    raise ArtifactError(f"{p}: holds no model kiln knows (config.pbtxt, model.safetensors, model.onnx, "
                        "model.pt, model.pt2)")  # fmt: skip


def image_files(args: list[str]) -> Iterator[Path]:
    """Files named on the command line as given; folders walked (sorted) for image extensions."""
    for a in args:
        p = Path(a)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                              and not any(part.startswith(".") for part in f.relative_to(p).parts))  # fmt: skip
        else:
            yield p


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict(loaded: Loaded, inputs: list[str], topk: int = 5, batch_size: int = 64,
            warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One result per file, in input order: {"path", "top": [{"class", "prob"}]} or {"path", "error"}."""
    warn = warn or console_warn
    pre = loaded.preprocess
    spec = preprocess_spec(pre)
    if spec.resize == "none":  # trained on images of one size: any other file is resized to it
        spec = replace(spec, resize="squash")
    # the geometry of training's evaluation and its arithmetic: decode as the cache does, then the centre view
    transform = BatchTransform(list(pre["mean"]), list(pre["std"]), AugmentConfig(), 0, spec=spec)
    k = max(1, min(topk, len(loaded.classes)))
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        x = transform.eval(torch.from_numpy(np.stack([a for _, a in pending])))
        logits = loaded.run(x.numpy())
        if logits.shape != (len(pending), len(loaded.classes)):
            raise ArtifactError(f"{loaded.path}: gave outputs of shape {list(logits.shape)} for {len(pending)} "
                                f"images and {len(loaded.classes)} classes")  # fmt: skip
        probs = _softmax(logits)
        for row, (i, _) in zip(probs, pending, strict=True):
            order = np.argsort(-row, kind="stable")[:k]
            results[i]["top"] = [{"class": loaded.classes[j], "prob": round(float(row[j]), 6)} for j in order]
        pending.clear()

    for f in image_files(inputs):
        results.append({"path": str(f)})
        if not f.is_file():
            results[-1]["error"] = f"{f}: no such file"
            warn(results[-1]["error"])
            continue
        try:
            pending.append((len(results) - 1, open_image(f, spec)[0]))
        except KilnError as e:  # DataError naming the file: reported, the other images still run
            results[-1]["error"] = str(e)
            warn(str(e))
            continue
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return results


def format_results(results: list[dict[str, Any]], fmt: str, topk: int) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2)
    import csv
    import io

    k = max([len(r.get("top", [])) for r in results] + [min(topk, 1)])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", *[h for j in range(1, k + 1) for h in (f"top{j}", f"top{j}_prob")], "error"])
    for r in results:
        top = r.get("top", [])
        cells = [v for t in top for v in (t["class"], f"{t['prob']:.6f}")]
        w.writerow([r["path"], *cells, *[""] * (2 * k - len(cells)), r.get("error", "")])
    return buf.getvalue().rstrip("\n")
