"""`kiln serve`: the real Triton Inference Server (from the ``nvidia-pytriton`` wheel) serving kiln models
through Triton's python backend, with kiln's preprocessing inside the server (``export/triton_model.py``).

- ``env.py``: the Python environment the backend's stub needs (numpy<2 beside kiln's numpy 2), made once;
- ``server.py``: start the server on a model repository, wait for it to be ready, stop it cleanly;
- ``stage.py``: a repository for any checkpoint or export, for ``kiln serve --model``;
- ``run.py``: ``serve``, the whole command.
"""
