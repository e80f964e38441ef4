"""TorchScript: trace and script on every built-in model, the fresh-process load, and a model whose forward
branches on tensor values (trace refused, or caught by the inverted batch; script keeps the branch)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.export import TOLERANCE, ExportError, VerificationError
from kiln.export.formats import torchscript
from kiln.export.run import export_checkpoint
from kiln.models import create_model
from kiln.models.restore import restore
from tests.export import exported, options, trained

pytestmark = pytest.mark.slow  # trains models; fresh Python processes


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-runs"


@pytest.mark.parametrize("name", ["lenet", "mlp", "resnet_small", "airbench"])
@pytest.mark.parametrize("method", ["trace", "script"])
def test_both_methods_work_for_every_builtin(name: str, method: str, tmp_path: Path) -> None:
    model = create_model(name, num_classes=4, in_channels=3, image_size=(32, 32)).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        notes = torchscript.save(model, x[:2], tmp_path / "m.pt", method)
        loaded = torchscript.load(tmp_path / "m.pt")
    # torch 2.14 warns "torch.jit.* is deprecated" on every call: kiln swallows them and notes it once
    assert not [w for w in leaked if "torch.jit" in str(w.message)], [str(w.message) for w in leaked]
    assert sum("TorchScript is deprecated" in n for n in notes) == 1
    with torch.no_grad():
        assert float((loaded(x) - model(x)).abs().max()) <= TOLERANCE


def test_fresh_process_without_kiln_loads_the_export(base: Path, tmp_path: Path) -> None:
    """Independently of kiln's own check: a bare `python -I` (no kiln import) loads model.pt and matches."""
    _, out = exported("lenet", "torchscript", base, method="trace")
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); import numpy as np, torch; "
        "m = torch.jit.load(sys.argv[1]); y = m(torch.from_numpy(np.load(sys.argv[2]))); "
        "np.save(sys.argv[3], y.detach().numpy()); assert not any(k.startswith('kiln') for k in sys.modules)"
    )
    subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            code,
            str(out / "model.pt"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        check=True,
        cwd=tmp_path,
        timeout=120,
    )
    with torch.no_grad():
        ref = restore(trained("lenet", base)).model(torch.from_numpy(x)).numpy()
    assert float(np.abs(np.load(tmp_path / "y.npy") - ref).max()) <= TOLERANCE


def test_trace_of_a_data_dependent_model_is_refused(base: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="data-dependent Python") as e:
        export_checkpoint(trained("gated", base), "torchscript", tmp_path, opts=options())
    assert "__init__.py" in str(e.value)
    assert "--method script" in str(e.value)
    assert not (tmp_path / "model.pt").exists()  # nothing half-right is left behind


def test_forced_trace_is_caught_on_the_branch_it_did_not_take(base: Path, tmp_path: Path) -> None:
    with pytest.raises(
        VerificationError, match=r"'inverted' batch .* max abs diff .* > tolerance 1e-04"
    ) as e:
        export_checkpoint(
            trained("gated", base), "torchscript", tmp_path, opts=options(allow_tracer_warnings=True)
        )
    assert e.value.exit_code == 4
    report = json.loads((tmp_path / "export.json").read_text())
    by_case = {c["case"]: c["max_abs_diff"] for c in report["cases"]}
    assert report["passed"] is False
    assert by_case["data"] == 0.0
    assert by_case["inverted"] > TOLERANCE


def test_script_keeps_the_data_dependent_branch(base: Path, tmp_path: Path) -> None:
    rep = export_checkpoint(
        trained("gated", base), "torchscript", tmp_path, opts=options(method="script", max_batch_size=8)
    )
    assert rep["passed"]
    assert {c["case"]: c["max_abs_diff"] for c in rep["cases"]}["inverted"] <= TOLERANCE


@pytest.mark.parametrize("fmt", ["export", "onnx"])
def test_graph_exporters_refuse_data_dependent_branches_in_one_line(
    fmt: str, base: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExportError) as e:
        export_checkpoint(trained("gated", base), fmt, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "data-dependent" in msg
    assert "--method script" in msg
    assert "torch.cond" in msg
