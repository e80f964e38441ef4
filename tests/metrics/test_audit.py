"""The audit's rules on tensors (kiln/metrics/audit.py): confident learning flags the labels the
out-of-fold probabilities contradict, pixel prints tell a photo's copies from other photos, the kNN
distance finds what is far from every train image. Unit tier: no model, no subprocess; the print tests use
real photos (hymenoptera) and copies made the ways photos get copied."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kiln.metrics import audit as rules
from kiln.metrics import twins


def probabilities(labels: torch.Tensor, classes: int, seed: int = 0) -> torch.Tensor:
    """Confident, slightly noisy probabilities of each image's true class."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((len(labels), classes), generator=g) + 6 * torch.nn.functional.one_hot(
        labels, classes
    )
    return logits.softmax(1)


def test_confident_learning_flags_exactly_the_flipped_labels() -> None:
    truth = torch.arange(60) % 3
    given = truth.clone()
    flipped = torch.tensor([4, 17, 33, 50])
    given[flipped] = (truth[flipped] + 1) % 3
    issues = rules.confident_issues(probabilities(truth, 3), given)
    assert torch.nonzero(issues.flagged).flatten().tolist() == flipped.tolist()


def test_it_suggests_the_true_label() -> None:
    truth = torch.arange(60) % 3
    given = truth.clone()
    given[7] = (truth[7] + 2) % 3
    issues = rules.confident_issues(probabilities(truth, 3), given)
    assert int(issues.suggested[7]) == int(truth[7])


def test_missing_and_extra_multi_labels_are_flagged_and_suggested() -> None:
    g = torch.Generator().manual_seed(0)
    truth = (torch.rand((80, 4), generator=g) < 0.5).long()
    probs = (torch.randn((80, 4), generator=g) + 4 * (2 * truth - 1)).sigmoid()
    given = truth.clone()
    rows, cols = torch.tensor([9, 30, 44, 71]), torch.tensor([2, 0, 3, 1])
    given[rows, cols] = 1 - given[rows, cols]
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):  # as sure of the truth as the surest
        same = probs[truth[:, c] == truth[r, c], c]
        probs[r, c] = same.max() if truth[r, c] else same.min()
    issues = rules.confident_issues(probs, given)
    assert torch.nonzero(issues.flagged).flatten().tolist() == rows.tolist()
    assert torch.equal(issues.suggested[rows], truth[rows])


def test_an_image_far_from_every_train_image_is_an_outlier() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn((3, 64), generator=g)
    train = rules.unit(centres.repeat(40, 1) + 0.3 * torch.randn((120, 64), generator=g))
    odd = rules.unit(torch.randn((1, 64), generator=g))
    cut = rules.outlier_cut(rules.outlier_scores(train, train, same=True))
    assert float(rules.outlier_scores(odd, train, same=False)[0]) > cut


def gray(image: Image.Image) -> torch.Tensor:
    """A photo's gray view as kiln cuts it: the centre square at 224 px, then ``twins.gray_views``."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.convert("RGB").crop((left, top, left + side, top + side)).resize((224, 224))
    x = torch.from_numpy(np.array(square)).permute(2, 0, 1)[None].float()
    return twins.gray_views(x)


def reencoded(image: Image.Image, quality: int, scale: float = 1.0) -> Image.Image:
    if scale != 1.0:
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def photos(hymenoptera_dir: Path) -> list[Image.Image]:
    return [Image.open(p) for p in sorted((hymenoptera_dir / "train" / "ants").iterdir())[:2]]


@pytest.mark.parametrize(
    "copy",
    [
        lambda im: reencoded(im, 45, 0.6),
        ImageOps.mirror,
        lambda im: im.crop((int(im.width * 0.05), 0, im.width, int(im.height * 0.95))),
    ],
    ids=["shrunk-and-reencoded", "mirrored", "cropped-to-95%"],
)
def test_a_copy_of_a_photo_is_its_twin(photos: list[Image.Image], copy) -> None:  # noqa: ANN001
    features = torch.tensor([0.9])  # a copy's features stay close; the pixels decide
    score = twins.twin_score(gray(photos[0]), gray(copy(photos[0])), features)
    assert float(score[0]) >= twins.TWIN_SCORE


def test_two_photos_of_one_class_are_not_twins(photos: list[Image.Image]) -> None:
    features = torch.tensor([0.9])  # even where the features are as close as a copy's
    score = twins.twin_score(gray(photos[0]), gray(photos[1]), features)
    assert float(score[0]) < twins.TWIN_SCORE
