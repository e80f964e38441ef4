"""What predict prints and serve returns for a row of logits: the top-k by softmax probability, display
names with the id beside them where it differs, and for multi-label models the labels at or above their
thresholds by sigmoid score (the rule of training's evaluation)."""

from __future__ import annotations

import numpy as np
import torch

from kiln.inference.runtime import answers, label_indices, scores
from kiln.recipe import ClassList

LOGITS = np.array([[2.0, -1.0, 0.5, 0.0], [-3.0, 1.0, 1.0, -0.2]], dtype=np.float32)
NAMED = ClassList(("n01", "n02", "bird", "cat"), ("plane", "car", "bird", "cat"))
MULTI = ClassList(NAMED.ids, NAMED.names, True, (0.8, 0.5, 0.6, 0.45))


def test_top_k_is_by_softmax_probability() -> None:
    (first, _) = answers(NAMED, LOGITS, topk=2)
    probs = torch.from_numpy(LOGITS).double().softmax(1)[0]
    assert [t["class"] for t in first["top"]] == ["plane", "bird"]
    assert [t["prob"] for t in first["top"]] == [round(float(probs[0]), 6), round(float(probs[2]), 6)]


def test_a_display_name_that_differs_from_the_id_carries_the_id() -> None:
    (first, _) = answers(NAMED, LOGITS, topk=4)
    assert first["top"][0] == {"class": "plane", "id": "n01", "prob": first["top"][0]["prob"]}
    assert "id" not in first["top"][1]  # bird is its own name


def test_single_label_rows_have_no_labels() -> None:
    assert all("labels" not in row for row in answers(NAMED, LOGITS, topk=2))


def test_multi_label_scores_are_evaluations_sigmoid() -> None:
    assert np.array_equal(scores(MULTI, LOGITS), torch.from_numpy(LOGITS).sigmoid().numpy())


def test_multi_label_labels_are_the_classes_at_or_above_their_threshold_highest_first() -> None:
    sigmoid = torch.from_numpy(LOGITS).sigmoid()
    expected = [
        sorted(np.flatnonzero((row >= torch.tensor(MULTI.thresholds)).numpy()), key=lambda j: -row[j])
        for row in sigmoid
    ]
    assert [label_indices(MULTI, row) for row in sigmoid.numpy()] == expected
    rows = answers(MULTI, LOGITS, topk=2)
    assert [[label["class"] for label in row["labels"]] for row in rows] == [
        ["plane", "bird", "cat"],
        ["car", "bird", "cat"],
    ]


def test_multi_label_top_k_is_by_sigmoid_score() -> None:
    (first, second) = answers(MULTI, LOGITS, topk=3)
    assert [t["class"] for t in second["top"]] == ["car", "bird", "cat"]
    assert second["top"][0]["prob"] == round(float(torch.sigmoid(torch.tensor(1.0))), 6)
    assert first["labels"][0] == {"class": "plane", "id": "n01", "score": first["top"][0]["prob"]}


def test_a_score_equal_to_its_threshold_is_a_label() -> None:
    at_threshold = ClassList(("a", "b"), ("a", "b"), True, (0.5, 0.9))
    assert label_indices(at_threshold, np.array([0.5, 0.89], dtype=np.float32)) == [0]
