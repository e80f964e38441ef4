"""model.head_init=pretrained_classes (engine/init.py:pick_start): the pretrained classifier's rows are a
start only where they beat a fresh head on the train images' loss, and multi-label labels pick each class's
images by the label they carry."""

from __future__ import annotations

import torch
from torch import nn

from kiln.engine.init import pick_start

OLD = (torch.cat([3 * torch.eye(2, 8), torch.zeros(2, 8)]), torch.zeros(4))  # 4 "ImageNet" classes


def images(misleading: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of 2 classes: class 0 looks like pretrained class 0, class 1 like pretrained class 1, except
    a share ``misleading`` of class 0's images, which look like class 1 to the pretrained classifier."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    looks = y.clone()
    looks[(y == 0) & (torch.rand(200, generator=g) < misleading)] = 1
    return 10 * torch.nn.functional.one_hot(looks, 8).float() + 0.1 * torch.randn(200, 8, generator=g), y


def test_rows_that_recognise_the_classes_are_kept() -> None:
    x, y = images(misleading=0.0)
    assert pick_start(nn.Linear(8, 2), OLD, x, y)[0]


def test_a_start_worse_than_a_fresh_head_is_dropped() -> None:
    x, y = images(misleading=0.4)  # confidently wrong on a fifth of the images
    head = nn.Linear(8, 2)
    fresh = head.weight.detach().clone()
    pick_start(head, OLD, x, y)
    assert torch.equal(head.weight, fresh)


def test_multi_label_labels_pick_images_by_label() -> None:
    x, y = images(misleading=0.0)
    head = nn.Linear(8, 2)
    pick_start(head, OLD, x, torch.nn.functional.one_hot(y, 2).float())
    assert torch.allclose(head.weight, OLD[0][:2])
