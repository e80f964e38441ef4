"""The records every export carries: ClassList (ids, display names, multi-label thresholds) read back as
written, older records without names or thresholds, and damaged ones refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.export import ArtifactError
from kiln.export.record import UNTUNED, ClassList, read_beside, short_record
from kiln.spec import ImageSpec, Preprocess

PREPROCESS = Preprocess(ImageSpec(3, (32, 32), "crop", 0.875, "bicubic"), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))


def test_a_class_list_reads_back_as_written() -> None:
    classes = ClassList(("n01", "n02"), ("tench", "goldfish"), True, (0.25, 0.75))
    assert ClassList.from_json(json.loads(json.dumps(classes.to_json())), "x") == classes


def test_a_record_without_names_shows_the_ids() -> None:
    classes = ClassList.from_json({"classes": ["cat", "dog"]}, "old preprocess.json")
    assert classes.names == ("cat", "dog")
    assert classes.multi_label is False


def test_a_multi_label_record_without_thresholds_cuts_at_one_half() -> None:
    classes = ClassList.from_json({"classes": ["a", "b", "c"], "multi_label": True}, "x")
    assert classes.thresholds == (UNTUNED,) * 3


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"classes": ["a", "b"], "class_names": ["only one"]}, "2 classes but 1 class_names"),
        ({"classes": ["a", "b"], "thresholds": [0.5]}, "2 classes but 2 class_names and 1 thresholds"),
        ({"classes": "ab"}, "must be non-empty lists"),
        ({"classes": ["a"], "thresholds": ["high"]}, "not a kiln record of classes (ValueError"),
        ({}, "not a kiln record of classes (KeyError"),
    ],
)
def test_a_damaged_record_names_its_source(record: dict, words: str) -> None:
    with pytest.raises(ArtifactError, match=r"^model/preprocess.json: ") as e:
        ClassList.from_json(record, "model/preprocess.json")
    assert words in str(e.value)


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
