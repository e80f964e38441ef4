"""Data: sources list samples as ``Split``s (``sources.py``, ``csv_source.py``, ``splits.py``), ``build.py``
plans a dataset (classes, spec: nothing decoded) and loads it (``memory.py``, ``loaders.py``: memory or
stream), ``augment.py`` turns stored uint8 batches into model inputs on the device. This module only
re-exports."""

from kiln.data.build import DataPlan, TrainData, build, image_spec, load_split, load_train, plan
from kiln.data.memory import Loader, default_workers, eval_batch
from kiln.spec import ImageSpec, Preprocess, Preset

__all__ = [
    "DataPlan",
    "ImageSpec",
    "Loader",
    "Preprocess",
    "Preset",
    "TrainData",
    "build",
    "default_workers",
    "eval_batch",
    "image_spec",
    "load_split",
    "load_train",
    "plan",
]
