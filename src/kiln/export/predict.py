"""``kiln predict``: run a checkpoint or any kiln export on image files with the recorded preprocessing.

Unreadable files are reported one by one (stderr and the output) and the rest still run.
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.data.decode import open_image
from kiln.data.sources import IMAGE_EXTENSIONS
from kiln.errors import KilnError
from kiln.export import ArtifactError

Run = Callable[[np.ndarray], np.ndarray]  # float32 NCHW -> logits


@dataclass
class Loaded:
    run: Run
    preprocess: dict[str, Any]  # in_channels, image_size [H, W], mean, std
    classes: list[str]
    kind: str
    path: Path


def _torch_run(module: Callable[..., Any]) -> Run:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).float().numpy()

    return run


def _read_preprocess(artifact: Path) -> dict[str, Any]:
    """preprocess.json beside the artifact, or one folder up (Triton: NAME/preprocess.json for NAME/1/x)."""
    for d in (artifact.parent, artifact.parent.parent):
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


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry compiled code (``<name>/code/``, ``constants.pkl``); checkpoints do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_any(path: str | Path, trust: bool = False) -> Loaded:
    """A runner for a kiln checkpoint, a TorchScript / .pt2 / ONNX / safetensors export or a Triton folder."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"--model {p}: no such file or folder")
    if p.is_dir():
        return _load_dir(p, trust)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        from kiln.export.onnx import Runner

        pre = _read_preprocess(p)
        return Loaded(Runner(p), pre, list(pre["classes"]), "onnx", p)
    if suffix == ".pt2":
        if not trust:
            raise ArtifactError(f"{p}: torch.export.load unpickles parts of a .pt2 file, which can run code "
                                "from it; pass --trust if you made it or trust its source (or share the ONNX "
                                "or safetensors export instead)")  # fmt: skip
        from kiln.export.program import load_pt2

        pre = _read_preprocess(p)
        return Loaded(_torch_run(load_pt2(p)), pre, list(pre["classes"]), "torch.export", p)
    if suffix == ".safetensors":
        return _load_safetensors(p)
    if _is_torchscript(p):
        from kiln.export.torchscript import load

        pre = _read_preprocess(p)
        return Loaded(_torch_run(load(p)), pre, list(pre["classes"]), "torchscript", p)
    from kiln.models.restore import restore  # a kiln checkpoint: torch.load(weights_only=True) only

    r = restore(p)
    return Loaded(_torch_run(r.model.float()), dict(r.preprocess), list(r.classes), "checkpoint", p)


def _load_safetensors(p: Path) -> Loaded:
    from kiln.export.program import load_safetensors

    model, recipe = load_safetensors(p)
    return Loaded(_torch_run(model), dict(recipe["preprocess"]), list(recipe["classes"]), "safetensors", p)


def _load_dir(p: Path, trust: bool) -> Loaded:
    from kiln.export import triton as tr

    if (p / "config.pbtxt").is_file():
        m = tr.check_model_dir(p, run_probe=False)  # a broken config is refused here, before any image
        pre = _read_preprocess(m.model_file)
        if list(pre["classes"]) != m.classes:
            raise ArtifactError(
                f"{p}: {m.config.output[0].label_filename} and preprocess.json list different classes"
            )
        return Loaded(tr.load_runner(m), pre, m.classes, f"triton ({m.backend})", p)
    models = [d for d in sorted(p.iterdir()) if (d / "config.pbtxt").is_file()]
    if len(models) == 1:  # a Triton repository holding one model
        return _load_dir(models[0], trust)
    if models:
        raise ArtifactError(f"{p}: a Triton repository with {len(models)} models; pass one of "
                            f"{', '.join(str(m) for m in models[:5])}")  # fmt: skip
    if (p / "model.safetensors").is_file():
        return _load_safetensors(p)
    for stem in ("model.onnx", "model.pt", "model.pt2"):  # an export folder: its one model file
        if (p / stem).is_file():
            return load_any(p / stem, trust)
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
    warn = warn or (lambda msg: print(f"kiln: warning: {msg}", file=sys.stderr))
    pre = loaded.preprocess
    c, size = int(pre["in_channels"]), tuple(int(s) for s in pre["image_size"])
    mean = np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
    k = max(1, min(topk, len(loaded.classes)))
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        x = np.stack([a for _, a in pending]).astype(np.float32) / 255.0
        logits = loaded.run(np.ascontiguousarray((x - mean) / std, dtype=np.float32))
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
            pending.append((len(results) - 1, open_image(f, c, size)))
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
