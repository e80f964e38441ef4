"""Triton Inference Server model repositories: writing a model folder for the libtorch, onnxruntime or
python backend (``repository.py``) and checking one (``check.py``). The python backend's ``model.py`` is
the inference part's ``kiln/inference/triton_model.py``, copied into the folder by path."""
