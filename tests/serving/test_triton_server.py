"""kiln's python-backend repository in a real Triton server, asked over HTTP and gRPC with tritonclient:
the answers equal `kiln predict` on the same files; broken images, wrong shapes and dtypes get clear
per-request errors and the server stays up; concurrent clients are answered (and batched)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.inference.predict import load_any, predict
from kiln.inference.runtime import Classifier, softmax

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is the serve extra")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is the export extra")
pytestmark = pytest.mark.slow
MODEL = "photos"


def _images(photos: Path) -> list[Path]:
    return sorted((photos / "val").rglob("*.jpg"))


def _client(server: Any, protocol: str) -> Any:
    return (
        tritonclient_http.InferenceServerClient(server.http_url)
        if protocol == "http"
        else tritonclient_grpc.InferenceServerClient(server.grpc_url)
    )


def _ask(client: Any, protocol: str, files: list[bytes], class_count: int = 0) -> Any:
    lib = tritonclient_http if protocol == "http" else tritonclient_grpc
    inp = lib.InferInput("IMAGE", [len(files), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[f] for f in files], dtype=object))
    out = lib.InferRequestedOutput("LOGITS", class_count=class_count)
    return client.infer(MODEL, [inp], outputs=[out]).as_numpy("LOGITS")


def _expected(photo_model: tuple[Path, Path], files: list[Path]) -> list[dict[str, Any]]:
    return predict(load_any(photo_model[0]), [str(f) for f in files], topk=3)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_single_images_and_a_batch_equal_kiln_predict(
    triton: Any, photo_model: tuple[Path, Path], protocol: str
) -> None:
    files = _images(photo_model[1])[:6]
    expected = _expected(photo_model, files)
    client = _client(triton, protocol)
    singles = [softmax(_ask(client, protocol, [f.read_bytes()]))[0] for f in files]
    batch = softmax(_ask(client, protocol, [f.read_bytes() for f in files]))
    for probs, row, want in zip(singles, batch, expected, strict=True):
        top = np.argsort(-probs)[:3]
        classes = load_any(photo_model[0]).classes
        assert [classes[i] for i in top] == [t["class"] for t in want["top"]]
        assert np.allclose([probs[i] for i in top], [t["prob"] for t in want["top"]], atol=1e-5)
        assert np.allclose(row, probs, atol=1e-5)  # in a batch or alone: the same answer


def test_the_classification_extension_gives_labels(triton: Any, photo_model: tuple[Path, Path]) -> None:
    f = _images(photo_model[1])[0]
    want = _expected(photo_model, [f])[0]["top"]
    top = _ask(_client(triton, "http"), "http", [f.read_bytes()], class_count=2)[0]
    got = [v.decode().split(":") for v in top]  # "score:index:label"
    assert [g[2] for g in got] == [w["class"] for w in want[:2]]


def test_ready_tensors_give_the_same_logits(triton: Any, photo_model: tuple[Path, Path]) -> None:
    clf = Classifier.load(photo_model[0])
    files = _images(photo_model[1])[:3]
    images = np.stack([clf.decode(f) for f in files])
    x = clf.transform.eval(__import__("torch").from_numpy(images)).numpy()
    client = _client(triton, "grpc")
    inp = tritonclient_grpc.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer(MODEL, [inp]).as_numpy("LOGITS")
    assert np.allclose(got, clf.logits(images), atol=1e-5)


def test_8_clients_x_50_requests(triton: Any, photo_model: tuple[Path, Path]) -> None:
    files = _images(photo_model[1])
    blobs = [f.read_bytes() for f in files]
    expected = [r["top"][0]["class"] for r in _expected(photo_model, files)]
    classes = load_any(photo_model[0]).classes

    def client_run(k: int) -> list[bool]:
        client = _client(triton, "http")
        try:
            return [
                classes[int(_ask(client, "http", [blobs[(k + i) % len(blobs)]])[0].argmax())]
                == expected[(k + i) % len(blobs)]
                for i in range(50)
            ]
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = [ok for part in pool.map(client_run, range(8)) for ok in part]
    assert len(answers) == 400
    assert all(answers)
    stats = _client(triton, "http").get_inference_statistics(MODEL)["model_stats"][0]
    sizes = [b["batch_size"] for b in stats["batch_stats"]]
    assert max(sizes) > 1  # concurrent requests were batched together


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_clear_errors_and_the_server_stays_up(
    triton: Any, photo_model: tuple[Path, Path], protocol: str
) -> None:
    lib = tritonclient_http if protocol == "http" else tritonclient_grpc
    client = _client(triton, protocol)
    with pytest.raises(
        lib.InferenceServerException if protocol == "grpc" else Exception,
        match=r"IMAGE\[0\]: cannot read image",
    ):
        _ask(client, protocol, [b"these bytes are not an image"])
    shape = lib.InferInput("INPUT", [1, 3, 64, 64], "FP32")
    shape.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(Exception, match=r"unexpected shape for input 'INPUT'.*Expected \[-1,3,32,32\]"):
        client.infer(MODEL, [shape])
    dtype = lib.InferInput("INPUT", [1, 3, 32, 32], "FP64")
    dtype.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float64))
    with pytest.raises(Exception, match="data-type is 'FP64', but model 'photos' expects 'FP32'"):
        client.infer(MODEL, [dtype])
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert _ask(client, protocol, [_images(photo_model[1])[0].read_bytes()]).shape == (1, 3)
