"""The hot loop's pieces that are plain functions: test-time augmentation views."""

from __future__ import annotations

import pytest
import torch

from kiln.engine.loop import tta_views


@pytest.mark.parametrize(("mode", "n"), [("none", 1), ("flip", 2), ("flip_translate", 6)])
def test_tta_views_and_weights(mode: str, n: int) -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    views = tta_views(x, mode)
    assert len(views) == n and sum(w for _, w in views) == pytest.approx(1.0)
    assert all(v.shape == x.shape for v, _ in views) and torch.equal(views[0][0], x)
    if mode == "flip_translate":  # airbench94's views: 1 px shifts (reflect-padded), mirrored too
        up_left, down_right = views[2][0], views[4][0]
        assert torch.equal(up_left[..., 1:, 1:], x[..., :-1, :-1])
        assert torch.equal(down_right[..., :-1, :-1], x[..., 1:, 1:])
        assert (
            torch.equal(views[3][0], up_left.flip(3)) and [w for _, w in views] == [0.25, 0.25] + [0.125] * 4
        )
