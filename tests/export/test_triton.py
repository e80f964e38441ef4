"""Triton repositories: config.pbtxt parses as Triton's ModelConfig with the right dims, types and batching,
and broken configs (syntax, names, shapes, types, labels) are rejected with one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kiln.export.base import TritonOptions
from kiln.export.formats import torchscript
from kiln.export.triton import check, repository
from kiln.models.restore import restore
from tests.export import exported, trained

pytestmark = pytest.mark.slow  # trains a model and exports it


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-runs"


@pytest.fixture(scope="module")
def onnx_model_dir(base: Path) -> Path:
    _, repo = exported("lenet", "triton", base, name="m", backend="onnx", method="trace")
    return repo / "m"


@pytest.fixture(scope="module")
def libtorch_model_dir(base: Path) -> Path:
    """Written directly (export verification is covered elsewhere): a traced lenet in a repository."""

    restored = restore(trained("lenet", base))
    repo = base / "triton-libtorch"
    model_dir, path = repository.write_repository(
        repo, "digits", [1, 8, 8], restored.recipe.classes, 8, TritonOptions()
    )
    import torch

    torchscript.save(restored.model, torch.zeros(2, 1, 8, 8), path, "trace")
    return model_dir


def test_config_parses_as_triton_model_config(onnx_model_dir: Path, libtorch_model_dir: Path) -> None:
    onnx_cfg = text_format.Parse(
        (onnx_model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert (onnx_cfg.name, onnx_cfg.platform, onnx_cfg.max_batch_size) == ("m", "onnxruntime_onnx", 16)
    (graph_input,), (graph_output,) = onnx_cfg.input, onnx_cfg.output
    assert (graph_input.name, list(graph_input.dims), graph_input.data_type) == (
        "input",
        [1, 8, 8],
        model_config_pb2.TYPE_FP32,
    )  # batch dim left out
    assert (
        graph_output.name,
        list(graph_output.dims),
        graph_output.data_type,
        graph_output.label_filename,
    ) == (
        "logits",
        [10],
        model_config_pb2.TYPE_FP32,
        "labels.txt",
    )
    assert onnx_cfg.HasField("dynamic_batching")
    assert onnx_cfg.instance_group[0].count == 1
    assert (onnx_model_dir / "labels.txt").read_text().splitlines() == [str(d) for d in range(10)]

    libtorch = check.check_model_dir(libtorch_model_dir)
    assert (libtorch.config.platform, libtorch.input_name, libtorch.output_name) == (
        "pytorch_libtorch",
        "INPUT__0",
        "OUTPUT__0",
    )
    assert libtorch.in_shape == [1, 8, 8]
    assert libtorch.model_file == libtorch_model_dir / "1" / "model.pt"


def test_max_batch_size_zero_spells_out_the_batch_dim() -> None:
    cfg = text_format.Parse(
        repository.config_text("x", [3, 32, 32], 5, 0, TritonOptions(backend="onnx")),
        model_config_pb2.ModelConfig(),
    )
    assert list(cfg.input[0].dims) == [-1, 3, 32, 32]
    assert list(cfg.output[0].dims) == [-1, 5]
    assert not cfg.HasField("dynamic_batching")


def test_scheduling_options_reach_every_backend() -> None:
    for backend in ("torchscript", "onnx", "python"):  # one writer for every backend
        scheduled = TritonOptions(backend=backend, instances=3, dynamic_batching=False)
        text = repository.config_text("x", [3, 8, 8], 2, 64, scheduled)
        cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert cfg.instance_group[0].count == 3
        assert not cfg.HasField("dynamic_batching")
        cfg = text_format.Parse(
            repository.config_text("x", [3, 8, 8], 2, 64, TritonOptions(backend=backend, queue_delay_us=250)),
            model_config_pb2.ModelConfig(),
        )
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 250


BROKEN_ONNX = [  # (what is changed in config.pbtxt, the words the error must contain)
    (("max_batch_size: 16", "max_batch: 16"), "not a valid Triton ModelConfig"),  # unknown field: schema
    (('name: "m"', 'name: "m"\nname "x"'), "not a valid Triton ModelConfig"),  # syntax
    (('name: "m"', 'name: "other"'), 'differs from the folder name "m"'),
    (
        ("dims: [ 1, 8, 8 ]", "dims: [ 1, 8, 9 ]"),
        "input dims [1, 8, 9] differ from the ONNX graph's [1, 8, 8]",
    ),
    (('name: "input"', 'name: "images"'), 'do not match the ONNX graph\'s "input"/"logits"'),
    (("dims: [ 10 ]", "dims: [ 9 ]"), "output dims [9] but labels.txt has 10 class names"),
    (("data_type: TYPE_FP32", "data_type: TYPE_FP16"), "TYPE_FP16, but the model uses TYPE_FP32"),
    (('platform: "onnxruntime_onnx"', 'platform: "tensorflow_savedmodel"'), "kiln writes and checks only"),
    (("max_batch_size: 16", "max_batch_size: 0"), "dims must start with -1"),
]


@pytest.mark.parametrize(("edit", "expected"), BROKEN_ONNX, ids=[e[1][:30] for e in BROKEN_ONNX])
def test_broken_config_is_rejected(
    edit: tuple[str, str], expected: str, onnx_model_dir: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(onnx_model_dir, tmp_path / "m")
    cfg = broken / "config.pbtxt"
    text = cfg.read_text()
    assert edit[0] in text
    cfg.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(check.TritonConfigError) as e:
        check.check_model_dir(broken)
    assert str(cfg) in str(e.value), str(e.value)
    assert expected in str(e.value), str(e.value)


def test_libtorch_config_mistakes_are_caught(libtorch_model_dir: Path, tmp_path: Path) -> None:
    for (old, new), expected in [
        (("dims: [ 1, 8, 8 ]", "dims: [ 1, 16, 16 ]"), "cannot run on input dims [1, 16, 16]"),
        (('name: "INPUT__0"', 'name: "input"'), 'use "INPUT__0" / "OUTPUT__0"'),
    ]:
        broken = shutil.copytree(libtorch_model_dir, tmp_path / old[:4].strip(), dirs_exist_ok=False)
        shutil.move(broken, tmp_path / "digits")
        cfg = tmp_path / "digits" / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace(old, new, 1))
        with pytest.raises(check.TritonConfigError, match="config.pbtxt: ") as e:
            check.check_model_dir(tmp_path / "digits")
        assert expected in str(e.value), str(e.value)
        shutil.rmtree(tmp_path / "digits")


def test_missing_labels_and_model_file(onnx_model_dir: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(onnx_model_dir, tmp_path / "m")
    (broken / "labels.txt").unlink()
    with pytest.raises(check.TritonConfigError, match="label_filename 'labels.txt' not found"):
        check.check_model_dir(broken)
    shutil.rmtree(broken / "1")
    with pytest.raises(check.TritonConfigError, match="no version folder holds model.onnx"):
        check.check_model_dir(broken)
