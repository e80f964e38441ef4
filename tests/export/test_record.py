"""The records every export carries beside its model file (preprocess.json): found beside the file or one
folder up, and a missing or damaged one refused naming the file (the records themselves: test_recipe.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.export import ArtifactError
from kiln.export.record import read_beside, short_record
from kiln.recipe import ClassList
from kiln.spec import ImageSpec, Preprocess

PREPROCESS = Preprocess(ImageSpec(3, (32, 32), "crop", 0.875, "bicubic"), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))


def test_the_records_beside_a_model_file_and_one_folder_up(tmp_path: Path) -> None:
    classes = ClassList(("0", "1"), ("zero", "one"))
    (tmp_path / "1").mkdir()
    (tmp_path / "preprocess.json").write_text(json.dumps(short_record(PREPROCESS, classes)))
    assert read_beside(tmp_path / "1" / "model.pt") == (PREPROCESS, classes)  # a Triton version folder
    assert read_beside(tmp_path / "model.onnx") == (PREPROCESS, classes)


def test_a_model_without_records_says_what_to_copy(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no preprocess.json beside it; .* Copy it along with the model"):
        read_beside(tmp_path / "model.onnx")


def test_a_broken_record_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "preprocess.json").write_text('{"in_channels": 3,')
    with pytest.raises(ArtifactError, match=rf"^{tmp_path / 'preprocess.json'}: not a kiln preprocess.json"):
        read_beside(tmp_path / "model.onnx")
