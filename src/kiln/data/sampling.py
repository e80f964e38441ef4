"""Class-balanced sampling: an epoch's sample indices drawn so that each class appears equally often in
expectation, for training on imbalanced data without changing the loss.

The order is drawn only from the generator the caller passes, which kiln seeds from (seed, epoch)
(``data.augment.seeded_generator(torch.device("cpu"), seed, epoch)``, as ``loaders.EpochOrder.indices``
does for its shuffle), so an epoch's order is a pure function of (seed, epoch) and a resumed run draws the
same epoch again. Under DDP the caller shards the returned order exactly as ``EpochOrder`` shards its own.
"""

from __future__ import annotations

import torch


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """[N] float64, 1 / (number of train samples of the sample's class): every class sums to 1."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


def balanced_order(
    labels: torch.Tensor, epoch_seed_generator: torch.Generator, n: int | None = None
) -> torch.Tensor:
    """[n] int64 sample indices for one epoch (n: default the number of train samples), drawn with
    replacement with probability proportional to ``balanced_weights``: the draw of
    ``torch.utils.data.WeightedRandomSampler(weights, n, replacement=True, generator=...)``, one call to
    ``torch.multinomial`` (same indices for the same generator state; the tests check that), returned as one
    tensor rather than a Python iterator of ints. Rare classes' samples repeat within an epoch, frequent
    classes' samples are partly left out; over epochs every sample is seen.

    ``torch.multinomial`` takes at most 2^24 categories, i.e. 16.7 M training samples."""
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() == 0:
        raise ValueError("balanced_order needs at least one training label")
    count = labels.numel() if n is None else n
    return torch.multinomial(
        balanced_weights(labels), count, replacement=True, generator=epoch_seed_generator
    )
