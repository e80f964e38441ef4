"""Class-balanced epoch orders: equal class frequencies in expectation, a pure function of (seed, epoch)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from kiln.data.augment import seeded_generator
from kiln.data.sampling import balanced_order, balanced_weights

CPU = torch.device("cpu")
COUNTS = [6000, 900, 90, 10]  # a long tail: 600x between the largest and the smallest class
LABELS = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))[
    torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(0))
]


def _order(seed: int, epoch: int) -> torch.Tensor:
    return balanced_order(LABELS, seeded_generator(CPU, seed, epoch))


def test_each_class_is_drawn_about_equally_often() -> None:
    share = torch.bincount(LABELS[_order(0, 0)], minlength=len(COUNTS)).double() / len(LABELS)
    # 7,000 draws at p = 1/4: one standard deviation of a share is 0.005; 0.025 is five of them
    assert share.numpy() == pytest.approx([0.25] * len(COUNTS), abs=0.025)


def test_an_epoch_has_as_many_draws_as_training_samples() -> None:
    assert len(_order(0, 0)) == len(LABELS)


def test_the_length_can_be_chosen() -> None:
    assert len(balanced_order(LABELS, seeded_generator(CPU, 0, 0), 100)) == 100


def test_the_order_is_a_pure_function_of_seed_and_epoch() -> None:
    assert torch.equal(_order(3, 5), _order(3, 5))


def test_two_epochs_differ() -> None:
    assert not torch.equal(_order(3, 5), _order(3, 6))


def test_two_seeds_differ() -> None:
    assert not torch.equal(_order(3, 5), _order(4, 5))


def test_it_draws_what_weighted_random_sampler_draws_with_the_same_generator() -> None:
    sampler = WeightedRandomSampler(
        balanced_weights(LABELS), len(LABELS), replacement=True, generator=seeded_generator(CPU, 1, 2)
    )
    assert _order(1, 2).tolist() == list(sampler)


def test_weights_are_one_over_the_class_count() -> None:
    weights = balanced_weights(LABELS)
    per_class = torch.zeros(len(COUNTS), dtype=torch.float64).index_add_(0, LABELS, weights)
    assert per_class.numpy() == pytest.approx([1.0] * len(COUNTS))


def test_the_rare_class_repeats() -> None:
    order = _order(0, 0)
    rare = order[LABELS[order] == 3]
    assert len(rare) > 10 * len(rare.unique())  # 10 images drawn ~1,750 times


def test_every_index_is_a_training_sample() -> None:
    order = _order(0, 0)
    assert set(order.unique().tolist()) <= set(range(len(LABELS)))
