"""The typed records of a trained model (kiln/recipe.py): ClassList and ModelRecipe read back as written,
a multi-label list without tuned thresholds cuts at 0.5, and damaged or incomplete records are refused
naming their source."""

from __future__ import annotations

import json

import pytest

from kiln.errors import ArtifactError
from kiln.recipe import UNTUNED, ClassList, ModelRecipe
from kiln.spec import ImageSpec, Preprocess

PREPROCESS = Preprocess(ImageSpec(3, (32, 32), "crop", 0.875, "bicubic"), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
CLASSES = {"classes": ["a", "b"], "class_names": ["ant", "bee"], "multi_label": False, "thresholds": None}


def test_a_class_list_reads_back_as_written() -> None:
    classes = ClassList(("n01", "n02"), ("tench", "goldfish"), True, (0.25, 0.75))
    assert ClassList.from_json(json.loads(json.dumps(classes.to_json())), "x") == classes


def test_a_model_recipe_reads_back_as_written() -> None:
    recipe = ModelRecipe("timm:resnet18", PREPROCESS, ClassList(("a", "b"), ("ant", "bee")), {"drop": 0.1})
    assert ModelRecipe.from_json(json.loads(json.dumps(recipe.to_json())), "x") == recipe


def test_a_multi_label_list_not_tuned_yet_cuts_at_one_half() -> None:
    assert ClassList(("a", "b", "c"), ("a", "b", "c"), multi_label=True).thresholds == (UNTUNED,) * 3


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"class_names": ["only one"]}, "2 classes but 1 class_names"),
        ({"thresholds": [0.5]}, "2 classes but 2 class_names and 1 thresholds"),
        ({"classes": "ab"}, "must be non-empty lists"),
        ({"thresholds": ["high", "low"]}, "not a kiln record of classes (ValueError"),
    ],
)
def test_a_damaged_class_list_names_its_source(change: dict, words: str) -> None:
    with pytest.raises(ArtifactError, match=r"^model/preprocess.json: ") as e:
        ClassList.from_json({**CLASSES, **change}, "model/preprocess.json")
    assert words in str(e.value)


def test_an_incomplete_class_list_names_the_missing_key() -> None:
    with pytest.raises(ArtifactError, match="not a kiln record of classes \\(KeyError: 'class_names'\\)"):
        ClassList.from_json({"classes": ["a", "b"]}, "old preprocess.json")


def test_an_incomplete_recipe_names_the_missing_key() -> None:
    with pytest.raises(ArtifactError, match="^best.pt: not a kiln model recipe \\(KeyError: 'imports'\\)"):
        ModelRecipe.from_json({"model": {"name": "lenet"}, **CLASSES}, "best.pt")
