"""The hot loop: test-time augmentation views, and ``train_one_epoch`` over a small real loader
(accumulation, clipping, non-finite losses, mixup, stopping, when the loss is read back)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kiln import signals
from kiln.config import AugmentConfig
from kiln.data.augment import BatchTransform
from kiln.data.loaders import EpochOrder, MemoryLoader
from kiln.engine.callbacks import Callback, CallbackList
from kiln.engine.evaluate import tta_views
from kiln.engine.loop import StepOptions, TrainState, mixed_loss, train_one_epoch
from kiln.errors import TrainingStopped


@pytest.mark.parametrize(("mode", "n"), [("none", 1), ("flip", 2), ("flip_translate", 6)])
def test_tta_views_and_weights(mode: str, n: int) -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    views = tta_views(x, mode)
    assert len(views) == n
    assert sum(w for _, w in views) == pytest.approx(1.0)
    assert all(v.shape == x.shape for v, _ in views)
    assert torch.equal(views[0][0], x)
    if mode == "flip_translate":  # airbench94's views: 1 px shifts (reflect-padded), mirrored too
        up_left, down_right = views[2][0], views[4][0]
        assert torch.equal(up_left[..., 1:, 1:], x[..., :-1, :-1])
        assert torch.equal(down_right[..., :-1, :-1], x[..., 1:, 1:])
        assert torch.equal(views[3][0], up_left.flip(3))
        assert [w for _, w in views] == [0.25, 0.25] + [0.125] * 4


CPU = torch.device("cpu")


def _loader(n: int = 32, batch: int = 8, shuffle: bool = False) -> MemoryLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    return MemoryLoader(images, torch.arange(n) % 3, EpochOrder(n, batch, shuffle, seed=0), CPU)


def _setup(
    lr: float = 0.1, augment: AugmentConfig | None = None
) -> tuple[nn.Module, torch.optim.Optimizer, BatchTransform]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    return (
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        BatchTransform([0.5], [0.25], augment or AugmentConfig(), 0),
    )


def _train(
    opts: StepOptions, criterion: Any = F.cross_entropy, **kw: Any
) -> tuple[nn.Module, TrainState, dict[str, Any]]:
    model, opt, t = _setup()
    state = kw.pop("state", TrainState())
    out = train_one_epoch(model, criterion, opt, kw.pop("loader", _loader()), t, state, opts, **kw)
    return model, state, out


def test_accumulating_two_batches_equals_one_double_batch() -> None:
    accumulated, state, _ = _train(StepOptions(accumulate=2))
    model, opt, t = _setup()
    loader = _loader(batch=16)
    for xb, y, _ in loader:  # the plain loop at twice the batch: the mean loss over 16 = mean of two means
        opt.zero_grad()
        F.cross_entropy(model(t.normalize(xb)), y).backward()
        opt.step()
    assert state.step == 2
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(accumulated.parameters(), model.parameters(), strict=True)
    )


def test_grad_clip_bounds_the_update() -> None:
    before = [p.detach().clone() for p in _setup()[0].parameters()]
    model, _, _ = _train(StepOptions(grad_clip=1e-3), loader=_loader(n=8))  # one step, lr 0.1
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert float(moved.norm()) == pytest.approx(0.1 * 1e-3, rel=1e-3)


def _nan_on_second_call() -> Any:
    calls = []

    def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if len(calls) == 2 else loss

    return criterion


def test_non_finite_loss_stops_or_is_skipped() -> None:
    with pytest.raises(TrainingStopped, match=r"non-finite loss \(nan\) at epoch 1, step 2"):
        _train(StepOptions(), _nan_on_second_call())
    model, state, out = _train(StepOptions(skip_nan=True), _nan_on_second_call())
    assert state.skipped_steps == 1
    assert state.step == 4
    assert math.isfinite(out["train_loss"])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_mixup_mixes_pairs_and_the_loss_follows() -> None:
    t = BatchTransform([0.5], [0.25], AugmentConfig(mixup=0.4), seed=3)
    x, idx = _loader().images[:8], torch.arange(8)
    (a, mix), (b, again) = t.train(x, idx, 1, 2), t.train(x, idx, 1, 2)
    assert mix is not None
    assert again is not None
    assert torch.equal(a, b)  # seeded
    assert mix.lam == again.lam
    plain = t.normalize(x)
    assert torch.allclose(a, mix.lam * plain + (1 - mix.lam) * plain[mix.perm], atol=1e-5)
    logits, y = torch.randn(8, 3), torch.arange(8) % 3
    expected = mix.lam * F.cross_entropy(logits, y) + (1 - mix.lam) * F.cross_entropy(logits, y[mix.perm])
    assert torch.allclose(mixed_loss(F.cross_entropy, logits, y, mix), expected)
    assert t.train(x, idx, 1, 3)[1].lam != mix.lam  # another step, another draw


def _stop_after(calls: int) -> Callable[[], bool]:
    """A stop flag that turns on at the ``calls``-th time the loop asks."""
    asked = [0]

    def should_stop() -> bool:
        asked[0] += 1
        return asked[0] >= calls

    return should_stop


def test_a_stop_inside_a_step_abandons_it_and_rewinds_to_its_start() -> None:
    loader = _loader()
    model, opt, transform = _setup()
    model.insert(1, nn.Dropout(0.5))  # a layer that draws from the global RNG during the step
    state, before = TrainState(), torch.get_rng_state()
    with pytest.raises(signals.Interrupt):
        train_one_epoch(
            model,
            F.cross_entropy,
            opt,
            loader,
            transform,
            state,
            StepOptions(accumulate=2),
            should_stop=_stop_after(3),
        )

    assert state.step == 0  # the step of batches 0-1 was abandoned mid-way ...
    assert loader.state_dict() == {"epoch": 0, "position": 0}  # ... so a resume does it again
    assert torch.equal(torch.get_rng_state(), before)


def test_a_stop_as_a_step_completes_ends_at_its_boundary() -> None:
    loader = _loader()
    # asked after batch 0's forward and backward (mid-window), after batch 1's forward; then at the boundary
    state = TrainState()
    with pytest.raises(signals.Interrupt):
        _train(StepOptions(accumulate=2), should_stop=_stop_after(4), loader=loader, state=state)
    assert state.step == 1
    assert loader.state_dict() == {"epoch": 0, "position": 2}


def test_a_stop_during_a_long_backward_cuts_it() -> None:
    loader = _loader()
    torch.manual_seed(0)
    # 1.07M parameters: big enough to be watched from the first step (LongSteps.BIG)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.Linear(1024, 3)
    )
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    transform = BatchTransform([0.5], [0.25], AugmentConfig(), 0)
    state = TrainState()
    # asked by the 5 leaves' forward hooks, after the forward, then by the first gradient hook: a stop
    with pytest.raises(signals.Interrupt):
        train_one_epoch(
            model, F.cross_entropy, opt, loader, transform, state, StepOptions(), should_stop=_stop_after(7)
        )
    assert state.step == 0  # without the gradient hook the step would complete first
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert loader.state_dict() == {"epoch": 0, "position": 0}


def test_a_stop_at_the_epochs_last_step_keeps_the_epoch() -> None:
    state = TrainState()
    model, opt, transform = _setup()
    out = train_one_epoch(
        model,
        F.cross_entropy,
        opt,
        _loader(),
        transform,
        state,
        StepOptions(),
        should_stop=lambda: state.step >= 4,  # 32 images in batches of 8: after the last step
    )
    assert out["train_loss"] > 0  # returned: its validation comes next (and is kept pending if stopped)


class _Record(Callback):
    def __init__(self) -> None:
        self.progress: list[tuple[int, int]] = []
        self.steps: list[int] = []

    def on_batch_end(self, step: int, loss: torch.Tensor, lr: float) -> None:
        self.steps.append(step)

    def on_progress(self, epoch: int, batch: int, batches: int, loss: float, acc: float) -> None:
        self.progress.append((batch, batches))


def test_the_loss_is_read_back_every_n_optimizer_steps_not_batches() -> None:
    rec = _Record()
    _train(StepOptions(accumulate=2, log_every=2), loader=_loader(n=64), callbacks=CallbackList([rec]))
    assert rec.steps == [0, 1, 1, 2, 2, 3, 3, 4]  # every batch is reported, with the optimizer step count
    assert rec.progress == [(4, 8), (8, 8)]  # steps 2 and 4 = batches 4 and 8


def test_a_fractional_epoch_stops_at_its_limit() -> None:
    loader = _loader()
    _, state, _ = _train(StepOptions(), limit=3, loader=loader)
    assert state.step == 3
    assert loader.state_dict()["position"] == 3
