"""Every format for lenet, mlp, resnet_small and a torchvision network: written, loaded back by its own
runtime, and matching the eager model on real images (real batch, batch 1, max batch, inverted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.export import TOLERANCE
from tests.export import exported, trained

pytestmark = pytest.mark.slow  # trains models and exports each in every format

# Each model goes through every format once. TorchScript alternates trace/script here (each costs a fresh
# Python process); test_torchscript.py runs both methods on every built-in model. Triton alternates backends.
METHOD = {"lenet": "trace", "mlp": "script", "resnet_small": "trace", "torchvision": "script"}
TRITON_BACKEND = {"lenet": "onnx", "mlp": "torchscript", "resnet_small": "onnx", "torchvision": "torchscript"}
ARTIFACT = {
    "torchscript": "model.pt",
    "export": "model.pt2",
    "onnx": "model.onnx",
    "safetensors": "model.safetensors",
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-runs"


def _check_report(rep: dict, artifact_dir: Path) -> None:
    assert rep["passed"], rep
    assert rep["max_abs_diff"] <= TOLERANCE, rep
    assert [c["case"] for c in rep["cases"]] == ["data", "batch-1", "batch-16", "inverted"]
    assert all(c["top1_agreement"] == 1.0 for c in rep["cases"])
    assert rep["data"]["source"].endswith("test split")  # real images, not the synthetic fallback
    saved = json.loads((artifact_dir / "export.json").read_text())
    assert saved["max_abs_diff"] == rep["max_abs_diff"]
    assert saved["passed"] is True
    pre = json.loads((artifact_dir / "preprocess.json").read_text())
    assert pre["scale"].startswith("uint8 0-255 -> float 0-1")
    assert pre["channel_order"]
    assert pre["image_size"] == rep["input_shape"][2:]
    assert pre["in_channels"] == rep["input_shape"][1]
    assert len(pre["classes"]) == rep["num_classes"]
    assert len(pre["mean"]) == len(pre["std"]) == pre["in_channels"]


@pytest.mark.parametrize("model", ["lenet", "mlp", "resnet_small", "torchvision"])
def test_every_format(model: str, base: Path) -> None:
    for fmt in ("torchscript", "export", "onnx", "safetensors"):
        rep, out = exported(model, fmt, base, method=METHOD[model])
        _check_report(rep, out)
        assert (out / ARTIFACT[fmt]).is_file()
        assert rep["artifact"] == str(out / ARTIFACT[fmt])
        if fmt == "torchscript":
            assert rep["loaded_by"]["loader"].startswith("torch.jit.load in a fresh Python process")
            assert rep["method"] == METHOD[model]
            assert any("TorchScript is deprecated" in n for n in rep["notes"])
        if fmt == "onnx":  # self-contained: no external-data side file
            assert sorted(p.name for p in out.iterdir()) == [
                ".kiln",
                "export.json",
                "model.onnx",
                "preprocess.json",
            ]
        if fmt == "safetensors":
            recipe = json.loads((out / "model.json").read_text())
            assert recipe["classes"] == json.loads((out / "preprocess.json").read_text())["classes"]

    backend = TRITON_BACKEND[model]
    rep, repo = exported(model, "triton", base, name="m", backend=backend, method=METHOD[model])
    _check_report(rep, repo / "m")
    assert rep["backend"] == backend
    assert (repo / "m" / "1" / {"torchscript": "model.pt", "onnx": "model.onnx"}[backend]).is_file()
    labels = (repo / "m" / "labels.txt").read_text().splitlines()
    assert labels == json.loads((repo / "m" / "preprocess.json").read_text())["classes"]


def test_onnx_is_one_file_with_a_dynamic_batch(base: Path) -> None:
    import onnx
    import onnxruntime

    from kiln.models.restore import restore

    _, out = exported("resnet_small", "onnx", base, method="trace")
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_output.name) == ("input", "logits")
    assert isinstance(graph_input.shape[0], str)
    assert graph_input.shape[1:] == [3, 32, 32]
    # onnxruntime parity with eager on a batch size seen neither at export nor in verification
    x = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = restore(trained("resnet_small", base)).model(torch.from_numpy(x)).numpy()
    (got,) = session.run(["logits"], {"input": x})
    assert got.shape == (7, 3)
    assert float(np.abs(got - ref).max()) <= TOLERANCE


def test_pt2_batch_dimension_is_unbounded(base: Path) -> None:
    _, out = exported("lenet", "export", base, method="trace")
    prog = torch.export.load(str(out / "model.pt2")).module()
    for n in (1, 3, 100):  # 100 > --max-batch-size 16
        assert prog(torch.zeros(n, 1, 8, 8)).shape == (n, 10)
