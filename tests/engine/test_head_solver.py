"""The frozen head's solve (engine/head_solver.py) on synthetic features: each point of the path is
scikit-learn's logistic regression at that C, the path keeps its best held-out point, k-fold stands in
for a missing val split, a large set runs its path on a subset and its final fit on every row, and the
penalty pulls towards the head's start."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from kiln.engine import head_solver
from kiln.engine.head_solver import Rows, fit, solve, zeroed


def blobs(n: int, dim: int = 12, classes: int = 3, noise: float = 2.0, seed: int = 0) -> Rows:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.arange(n) % classes
    x = centres[y] + noise * torch.randn(n, dim, generator=g)
    return Rows(x, y, torch.arange(n))


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    return float((logits.argmax(1) == y).double().mean()), float(F.cross_entropy(logits, y))


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_a_fit_is_scikit_learns_logistic_regression(c: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head_solver, "TOLERANCE", 1e-9)  # the same objective, to the end
    rows = blobs(300)
    head = nn.Linear(12, 3)
    fit(head, rows.x, rows.y, F.cross_entropy, 1.0 / (c * len(rows.x)))
    reference = LogisticRegression(C=c, max_iter=10_000, tol=1e-10).fit(rows.x.numpy(), rows.y.numpy())
    probs = torch.softmax(head(rows.x), 1).detach()
    assert torch.allclose(probs, torch.tensor(reference.predict_proba(rows.x.numpy())).float(), atol=1e-3)


def test_the_path_keeps_its_best_held_out_point() -> None:
    rows, val = blobs(120), blobs(300, seed=1)
    best, path = solve(nn.Linear(12, 3), rows, F.cross_entropy, accuracy, 120, (val.x, val.y))
    top = max(p.score for p in path)
    assert best == min((p for p in path if p.score == top), key=lambda p: p.loss)


def test_the_head_is_left_at_the_best_point() -> None:
    rows, val = blobs(120), blobs(300, seed=1)
    head = nn.Linear(12, 3)
    best, _ = solve(head, rows, F.cross_entropy, accuracy, 120, (val.x, val.y))
    with torch.no_grad():
        assert accuracy(head(val.x), val.y)[0] == best.score


def test_without_a_val_split_folds_choose_and_every_row_is_fitted() -> None:
    rows = blobs(150)
    head = nn.Linear(12, 3)
    head.load_state_dict(zeroed(head))
    best, _ = solve(head, rows, F.cross_entropy, accuracy, 150, None)
    again = nn.Linear(12, 3)
    again.load_state_dict(zeroed(again))  # the same start, the chosen strength, every row
    fit(again, rows.x, rows.y, F.cross_entropy, best.strength)
    assert torch.equal(head.weight, again.weight)


def test_a_large_set_runs_its_path_on_a_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head_solver, "PATH_ROWS", 100)
    rows, val = blobs(400), blobs(200, seed=1)
    seen: list[int] = []
    real_fit = head_solver.fit

    def counting(head: nn.Module, x: torch.Tensor, *args: object) -> None:
        seen.append(len(x))
        real_fit(head, x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(head_solver, "fit", counting)
    best, path = solve(nn.Linear(12, 3), rows, F.cross_entropy, accuracy, 400, (val.x, val.y))
    assert seen == [100] * len(path) + [400]


def test_the_final_strength_is_for_every_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head_solver, "PATH_ROWS", 100)
    rows, val = blobs(400), blobs(200, seed=1)
    best, _ = solve(nn.Linear(12, 3), rows, F.cross_entropy, accuracy, 400, (val.x, val.y))
    assert best.strength == pytest.approx(1.0 / (best.c * 400))


def test_a_strong_penalty_keeps_the_head_at_its_start() -> None:
    rows = blobs(100)
    start = torch.randn(3, 12)
    head = nn.Linear(12, 3)
    fit(head, rows.x, rows.y, F.cross_entropy, 1e4, [start])
    assert torch.allclose(head.weight, start, atol=1e-2)
