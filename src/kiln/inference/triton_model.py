"""Triton python-backend model written by `kiln export --format triton --backend python` and `kiln serve`
(this file is copied as NAME/1/model.py; export copies it by path and never imports it). It runs the kiln
artifact beside it (``parameters.artifact`` in config.pbtxt) with kiln's own preprocessing, so the
server's answers equal ``kiln predict``'s:

- input ``IMAGE``: encoded image files (JPEG, PNG, ...), one per batch row (BYTES);
- input ``INPUT``: ready tensors, float32 [C, H, W] per row, normalised as preprocess.json says;
- output ``LOGITS``: float32 [num_classes]; ask for ``class_count`` k to get Triton's top-k with labels;
- output ``LABELS`` (multi-label models only): one JSON string per row, ``[{"class", "score"}, ...]``, the
  classes whose sigmoid score is >= their threshold, highest first (as ``kiln predict``'s "labels").

A request whose image cannot be decoded gets an error of its own; the other requests of the batch are
answered. The Python that runs this needs kiln (``pip install torchkiln``) and numpy<2 (Triton's python
backend stub is built against numpy 1.x): ``kiln serve --setup`` makes such an environment.
"""

import json
import os
import sys

# kiln serve's server runs the kiln that started it: Triton's python stub ignores PYTHONPATH (it runs
# isolated), so kiln passes a folder holding only a link to its package (kiln.serving.server.link_kiln)
if os.environ.get("KILN_SOURCE") and os.environ["KILN_SOURCE"] not in sys.path:
    sys.path.insert(0, os.environ["KILN_SOURCE"])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from kiln.errors import KilnError  # noqa: E402
from kiln.inference.runtime import Classifier, labels_above, scores  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        artifact = config["parameters"]["artifact"]["string_value"]
        # the cores shared among the instances: several instances on few cores must not oversubscribe
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        threads = os.environ.get("KILN_TRITON_THREADS") or max(1, (os.cpu_count() or 1) // instances)
        torch.set_num_threads(int(threads))
        device = "cuda" if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available() else "cpu"
        path = os.path.join(args["model_repository"], args["model_version"], artifact)
        trust = config["parameters"].get("trust", {}).get("string_value") == "true"  # .pt2: the user said so
        self.classifier = Classifier.load(path, trust=trust, device=device)

    def _decoded(self, request: object) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
        """(decoded images, None) for an IMAGE request, (None, tensors) for an INPUT one."""
        image = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        ready = pb_utils.get_input_tensor_by_name(request, "INPUT")
        if (image is None) == (ready is None):
            raise KilnError("send exactly one of IMAGE (encoded image files, BYTES) or INPUT (FP32 tensors)")
        if ready is not None:
            return None, ready.as_numpy()
        blobs = image.as_numpy().reshape(-1)
        return [self.classifier.decode(bytes(b), name=f"IMAGE[{j}]") for j, b in enumerate(blobs)], None

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        images, tensors = [], []  # (request index, rows)
        for i, request in enumerate(requests):
            try:
                decoded, ready = self._decoded(request)
            except KilnError as e:  # this request alone fails; the server and the other requests go on
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                )
                continue
            if decoded is not None:
                images.append((i, decoded))
            else:
                tensors.append((i, ready))
        if images:  # every image of every request in one forward pass: what dynamic batching is for
            logits = self.classifier.logits(np.stack([row for _, rows in images for row in rows]))
            start = 0
            for i, rows in images:
                responses[i] = self._answer(logits[start : start + len(rows)])
                start += len(rows)
        for i, x in tensors:
            responses[i] = self._answer(self.classifier.logits_of_tensors(x))
        return responses

    def _answer(self, logits: np.ndarray) -> object:
        outputs = [pb_utils.Tensor("LOGITS", logits.astype(np.float32))]
        classes = self.classifier.class_list
        if classes.multi_label:
            rows = [[json.dumps(labels_above(classes, row)).encode()] for row in scores(classes, logits)]
            outputs.append(pb_utils.Tensor("LABELS", np.array(rows, dtype=object)))
        return pb_utils.InferenceResponse(output_tensors=outputs)
