"""``kiln predict --url http://HOST:PORT [--name MODEL] IMAGES...``: the same results as a local ``kiln
predict``, from a running ``kiln serve`` (or any Triton server holding a repository kiln wrote for the
python backend), over KServe v2 HTTP with ``tritonclient.http`` (the ``serve`` extra).

The files are sent as they are (encoded bytes, input ``IMAGE``), a few per request; the server decodes and
preprocesses them with kiln's own code. The model's classes (ids, display names, multi-label thresholds)
come from its config.pbtxt (parameter ``kiln_classes``), so top-k and labels are read exactly as local
predict reads them; a multi-label model's labels are the server's ``LABELS`` output. A file the server
cannot decode is reported with its path, and the other files still run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kiln.console import warn as console_warn
from kiln.errors import KilnError, brief, clip
from kiln.export.triton.repository import CLASSES_PARAMETER, IMAGE, LABELS_OUTPUT, LOGITS
from kiln.inference.predict import in_batches
from kiln.inference.runtime import answers
from kiln.recipe import ClassList

REQUEST_IMAGES = 8  # files per request: a few, so that a request stays small and a bad file costs one retry


def _http() -> Any:
    try:
        import tritonclient.http as http_client
    except ImportError:
        raise KilnError("kiln predict --url needs tritonclient: pip install 'torchkiln[serve]'") from None
    return http_client


def connect(url: str) -> Any:
    """A tritonclient.http client of the server at ``url``, which must answer; one line when it does not."""
    http_client = _http()
    address = url.split("://", 1)[-1].rstrip("/")  # tritonclient takes host:port
    try:
        client = http_client.InferenceServerClient(
            address, ssl=url.startswith("https://"), connection_timeout=10.0, network_timeout=300.0
        )
        live = client.is_server_live()
    except Exception as e:  # ConnectionRefusedError, socket.gaierror, gevent timeouts, a bad address
        raise KilnError(
            f"no kiln serve / Triton server answers at {clip(url, 200)} "
            f"({clip(str(e) or type(e).__name__, 120)}); start one with kiln serve --model MODEL"
        ) from None
    if not live:
        raise KilnError(
            f"the server at {clip(url, 200)} is not live yet; wait for kiln serve's 'serving' line"
        )
    return client


def model_classes(client: Any, url: str, name: str | None) -> tuple[str, ClassList]:
    """The model to ask (``name``, or the server's only model) and its classes from its config."""
    ready = sorted(m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY")
    if name is None and len(ready) == 1:
        name = ready[0]
    if name is None or name not in ready:
        serves = ", ".join(ready[:10]) or "no ready model"
        asked = f"--name {brief(name)}: no such model" if name else "several models"
        raise KilnError(f"{asked} at {clip(url, 200)}; it serves: {serves} (choose one with --name)")
    parameters = client.get_model_config(name).get("parameters", {})
    raw = parameters.get(CLASSES_PARAMETER, {}).get("string_value")
    if not raw:
        raise KilnError(
            f"model {brief(name)} at {clip(url, 200)} has no '{CLASSES_PARAMETER}' in its config: serve it "
            "with kiln serve, or export it with kiln export --format triton --backend python"
        )
    return name, ClassList.from_json(json.loads(raw), f"{url} model {name}")


class Remote:
    """One model on a server: encoded files in, one answer (or error) per file out."""

    def __init__(self, url: str, name: str | None) -> None:
        self.url, self.http_client = url, _http()
        self.client = connect(url)
        self.name, self.classes = model_classes(self.client, url, name)

    def _infer(self, blobs: list[bytes]) -> tuple[np.ndarray, list[list[dict[str, Any]]] | None]:
        image = self.http_client.InferInput(IMAGE, [len(blobs), 1], "BYTES")
        image.set_data_from_numpy(np.array([[b] for b in blobs], dtype=object))
        names = [LOGITS, *([LABELS_OUTPUT] if self.classes.multi_label else [])]
        wanted = [self.http_client.InferRequestedOutput(n) for n in names]
        result = self.client.infer(self.name, [image], outputs=wanted)
        labels = result.as_numpy(LABELS_OUTPUT) if self.classes.multi_label else None
        return result.as_numpy(LOGITS), None if labels is None else [
            json.loads(v) for v in labels.reshape(-1)
        ]

    def ask(self, files: list[tuple[Path, bytes]], topk: int) -> list[dict[str, Any]]:
        """Answers for these (path, encoded bytes): {"top", ("labels")} or {"error"}; a failed request is
        retried file by file, so only the files the server could not read fail."""
        from tritonclient.utils import InferenceServerException

        try:
            logits, labels = self._infer([blob for _, blob in files])
        except InferenceServerException as e:
            if len(files) > 1:
                return [answer for file in files for answer in self.ask([file], topk)]
            message = str(e.message() if callable(getattr(e, "message", None)) else e)
            return [{"error": message.replace(f"{IMAGE}[0]", str(files[0][0]), 1)}]
        except OSError as e:  # the server went away mid-run
            raise KilnError(f"kiln predict --url {clip(self.url, 200)}: {clip(str(e), 160)}") from None
        rows = answers(self.classes, logits, topk)
        for row, row_labels in zip(rows, labels or [], strict=False):
            row["labels"] = row_labels  # the server's own LABELS output
        return rows


def predict_url(
    url: str,
    name: str | None,
    inputs: list[str],
    topk: int = 5,
    batch_size: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """``kiln predict``'s results, computed by the server at ``url``: one per file, in input order."""
    remote = Remote(url, name)

    def read(path: Path) -> tuple[Path, bytes]:
        try:
            return path, path.read_bytes()
        except OSError as e:  # unreadable here (permissions, vanished): this file fails, the rest run
            raise KilnError(f"{path}: cannot read the file ({e.strerror or e})") from None

    def run(batch: list[tuple[int, tuple[Path, bytes]]], results: list[dict[str, Any]]) -> None:
        for (i, _), answer in zip(batch, remote.ask([file for _, file in batch], topk), strict=True):
            results[i].update(answer)
            if "error" in answer:
                (warn or console_warn)(answer["error"])

    return in_batches(inputs, read, batch_size or REQUEST_IMAGES, run, warn or console_warn)
