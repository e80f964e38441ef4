"""TorchScript: ``torch.jit.trace`` or ``torch.jit.script``, and loading the file back in a fresh process.

trace runs the model once on an example batch and records the tensor operations that ran: any Python
``if``/``for`` that depends on tensor *values* is frozen to the branch the example took, silently. kiln
turns the TracerWarning that PyTorch emits in that case into a refusal. script compiles the Python source of
``forward`` and keeps control flow, but only understands a typed subset of Python.

TorchScript is deprecated (torch 2.14 warns ``torch.jit.* is deprecated`` on every call). It is still what
Triton's libtorch backend loads, so kiln keeps it, silences those warnings and says so once.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.export import ArtifactError, ExportError
from kiln.export.base import ExportOptions, Format, Loaded, RunMany, Saved, torch_runner
from kiln.recipe import ModelRecipe
from kiln.registry import register_format

METHODS = ("trace", "script")


class Silenced:
    """Counts the TorchScript deprecation warnings swallowed and keeps the TracerWarnings seen."""

    def __init__(self) -> None:
        self.deprecations = 0
        self.tracer: list[str] = []


@contextlib.contextmanager
def quiet_jit() -> Iterator[Silenced]:
    """Swallow torch.jit's deprecation FutureWarnings (one per call, several per export) and collect
    TracerWarnings for the caller to judge; every other warning is passed on unchanged."""
    seen = Silenced()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("always", category=torch.jit.TracerWarning)
        # as torch does at import: TracerWarnings raised inside torch itself are its nn shape checks, noise
        torch.jit.TracerWarning.ignore_lib_warnings()
        yield seen
    for w in caught:
        msg = str(w.message)
        if issubclass(w.category, FutureWarning) and "is deprecated" in msg and "torch.jit" in msg:
            seen.deprecations += 1
        elif issubclass(w.category, torch.jit.TracerWarning):
            seen.tracer.append(f"{Path(w.filename).name}:{w.lineno}: {msg.splitlines()[0]}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def deprecation_note(n: int) -> str:
    return (
        f"TorchScript is deprecated in torch {torch.__version__.split('+')[0]}; kiln silenced its {n} "
        "deprecation warning(s). Triton's libtorch backend still loads it; for new deployments prefer "
        "--format onnx or --format export"
    )


def save(
    model: nn.Module, example: torch.Tensor, path: Path, method: str, allow_tracer_warnings: bool = False
) -> list[str]:
    """Write ``model`` as TorchScript; returns notes for the report. Refuses a trace that PyTorch flagged
    as data-dependent (unless allowed) and turns scripting errors into one-line ExportErrors."""
    if method not in METHODS:
        raise ExportError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    model = model.eval()
    notes: list[str] = []
    with quiet_jit() as seen, torch.no_grad():
        try:
            if method == "trace":
                # check_trace re-runs the trace against eager on the example; kiln's own verify is stricter
                module = torch.jit.trace(model, example, check_trace=False)
            else:
                module = torch.jit.script(model)
        except Exception as e:  # torch raises RuntimeError, NotSupportedError, FrontendError, TypeError...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = (
                "; try --method trace (it records one run and needs no type annotations)"
                if method == "script"
                else "; try --method script"
            )
            raise ExportError(
                f"torch.jit.{method} failed for {type(model).__name__}: {first}{hint}"
            ) from None
        module.save(str(path))
    if seen.tracer:
        where = seen.tracer[0] + (f" (+{len(seen.tracer) - 1} more)" if len(seen.tracer) > 1 else "")
        if not allow_tracer_warnings:
            path.unlink(missing_ok=True)
            raise ExportError(
                f"tracing {type(model).__name__} hit data-dependent Python ({where}); a trace would freeze "
                "that branch for every input. Use --method script (keeps control flow), or "
                "--allow-tracer-warnings if the value is really constant"
            )
        notes.append(f"TracerWarning accepted (--allow-tracer-warnings): {where}")
    notes.append(deprecation_note(seen.deprecations))
    return notes


def load(path: Path) -> torch.jit.ScriptModule:
    """In-process load (for predict). torch.jit.load uses TorchScript's own restricted unpickler, which
    resolves only TorchScript types, not arbitrary Python callables."""
    with quiet_jit():
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{path}: not a loadable TorchScript file ({first})") from None


# Runs in a fresh interpreter (python -I: no PYTHONPATH, no user site, no cwd on sys.path) that never
# imports kiln, as a deployment would. Tensors travel as .npz files read with allow_pickle=False.
_CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")  # torch.jit deprecation notices, already reported by the parent
import numpy as np
import torch
model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
outs = {}
with np.load(sys.argv[2], allow_pickle=False) as batches, torch.inference_mode():
    for key in batches.files:
        outs[key] = model(torch.from_numpy(batches[key])).float().numpy()
np.savez(sys.argv[3], **outs)
print(json.dumps({"torch": torch.__version__, "python": sys.version.split()[0],
                  "kiln_imported": any(m == "kiln" or m.startswith("kiln.") for m in sys.modules)}))
"""


def run_fresh(
    path: Path, batches: dict[str, np.ndarray], timeout: float = 300
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Outputs of the TorchScript file at ``path`` for each named batch, computed by a new Python process,
    plus what that process reported about itself."""
    with tempfile.TemporaryDirectory(prefix="kiln-ts-") as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **batches)
        cmd = [sys.executable, "-I", "-c", _CHILD, str(Path(path).resolve()), str(inp), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise ExportError(
                f"{path}: loading it in a fresh Python process took over {timeout:.0f} s"
            ) from None
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            raise ExportError(f"{path}: a fresh Python process could not load and run it: {tail[0]}")
        with np.load(out, allow_pickle=False) as arrays:
            results = {name: arrays[name] for name in arrays.files}
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if info["kiln_imported"]:  # the whole point of the fresh process: prove the file stands alone
        raise ExportError(
            f"{path}: the fresh process imported kiln while loading it; the file is not standalone"
        )
    return results, info


def is_torchscript(path: Path) -> bool:
    """TorchScript archives carry compiled code (``<name>/code/``, ``constants.pkl``); checkpoints do not."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def fresh_runner(path: Path, loaded_by: dict[str, Any]) -> RunMany:
    """Verification runs the file in a new Python process that never imports kiln, as a deployment would."""

    def run_many(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, info = run_fresh(path, inputs)
        loaded_by.update(
            loader="torch.jit.load in a fresh Python process (python -I, kiln not imported)",
            process_torch=info["torch"],
            process_python=info["python"],
        )
        return outputs

    return run_many


@register_format("torchscript")
class TorchScript(Format):
    name = "torchscript"

    def save(
        self,
        model: nn.Module,
        example: torch.Tensor,
        out_dir: Path,
        recipe: ModelRecipe,
        opts: ExportOptions,
    ) -> Saved:
        path = out_dir / f"{opts.name or 'model'}.pt"
        notes = save(model, example, path, opts.method, opts.allow_tracer_warnings)
        loaded_by: dict[str, Any] = {}
        return Saved(
            path,
            out_dir,
            fresh_runner(path, loaded_by),
            notes,
            loaded_by=loaded_by,
            names=("input 0 (TorchScript tensors are positional)", "output 0"),
            details={"method": opts.method},
            variant=opts.method,
        )

    def load(self, path: Path, trust: bool, device: str = "cpu") -> Loaded:
        return self.loaded(torch_runner(load(path), device), path, device)

    def claims(self, path: Path) -> bool:
        return is_torchscript(path)
