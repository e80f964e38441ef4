"""Running any kiln model on image files: ``kiln predict``, Triton's python model and ``kiln serve``.

- ``loading.py``: ``load_any``, a checkpoint or any export (each format claims and loads its own);
- ``runtime.py``: ``Classifier``, decoding and preprocessing exactly as training's evaluation, batched,
  and ``answers`` (top-k; a multi-label model's labels at its thresholds);
- ``predict.py``: files -> results, as JSON or CSV; ``explain.py``: Grad-CAM overlays (``--explain``);
- ``client.py``: ``kiln predict --url``, the same results from a running ``kiln serve``;
- ``triton_model.py``: the python backend's model.py (copied into repositories by ``kiln.export``).
"""
