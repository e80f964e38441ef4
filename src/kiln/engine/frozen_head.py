"""The head solved on a frozen backbone's cached features (``head_solver.py``), judged by the run's own
monitored metric: the frozen epochs as one solve (``trainer.frozen_head: solve``), and the start that
fine-tuning continues from (``model.head_init: probe``, ``auto`` with pretrained weights).

What the head is fitted to, and from where, is chosen on the held-out split like the L2 strength:

- the rows: the evaluation view of every train image, and (with random augmentation) that plus the
  augmentation views. Crops of a quarter of a photo help on photos of objects and hurt on small centred
  ones: on MNIST digits as photos the views alone cost 10 points (0.757 against a probe's 0.853);
- the start the penalty pulls towards: zeros (a plain linear probe), or the pretrained classifier's rows
  mixed per class (``transfer.init_head_from_classes``), which keep what ImageNet knows of classes it has
  (ants and bees: 0.98 before any training).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from kiln.console import log
from kiln.engine import head_solver
from kiln.engine.distributed import broadcast_tensors
from kiln.engine.evaluate import evaluate, hits
from kiln.engine.feeds import CachedFeatures
from kiln.engine.loop import Criterion
from kiln.engine.twins import warn_of_leaks
from kiln.models.transfer import init_head_from_classes
from kiln.optim import advance


@dataclass(frozen=True)
class Solved:
    """The winning solve: its point on the path, what it was fitted on and from, and every candidate's."""

    point: head_solver.Point
    how: str
    rows: head_solver.Rows
    tried: str  # every candidate's best, for the log
    seconds: float

    def train_metrics(self, head: torch.nn.Module, criterion: Criterion) -> dict[str, float]:
        with torch.no_grad():
            logits = head(self.rows.x).float()
            loss, acc = float(criterion(logits, self.rows.y)), float(hits(logits, self.rows.y).mean())
        return {
            "train_loss": loss,
            "train_acc": acc,
            "images_per_s": len(self.rows.x) / max(self.seconds, 1e-9),
            "train_seconds": self.seconds,
            "head_c": self.point.c,
            "head_l2": self.point.strength,
        }


def solve_on(
    feed: CachedFeatures, criterion: Criterion, judge: head_solver.Judge, seed: int, device: torch.device
) -> Solved:
    """Solve the head on every candidate (rows, start) and leave it at the best held-out one; every rank
    ends with rank 0's head."""
    head = feed.model.get_submodule(feed.head_name)
    val = feed.split_features("val")
    held = (val, feed.data.val.raw_labels) if val is not None and feed.data.val is not None else None
    n_images = feed.data.train.order.n
    tries = candidates(feed)  # the features are computed (or read) here: the solve's time starts after
    if val is not None and feed.dist.is_main:
        warn_of_leaks(feed.data, feed.centre_features(), {"val": val})
    t0 = time.perf_counter()
    found = []
    for how, rows, start in tries:
        head.load_state_dict(start)
        best, _ = head_solver.solve(head, rows, criterion, judge, n_images, held, seed)
        found.append((best, how, {k: v.detach().clone() for k, v in head.state_dict().items()}, rows))
    best, how, state, rows = max(found, key=lambda found: rank(found[0]))
    head.load_state_dict(broadcast_tensors(feed.dist, state, device))
    tried = "; ".join(f"{name}: C={p.c:.2g} {abs(p.score):.4f}" for p, name, _, _ in found)
    return Solved(best, how, rows, tried, time.perf_counter() - t0)


def candidates(feed: CachedFeatures) -> list[tuple[str, head_solver.Rows, dict[str, torch.Tensor]]]:
    """Every (what it is fitted on and from, rows, start state) the head may be solved with."""
    head = feed.model.get_submodule(feed.head_name)
    starts = {"zeros": head_solver.zeroed(head)}
    if feed.prior is not None:
        with torch.no_grad():
            head.load_state_dict(starts["zeros"])
            labels = feed.data.train.raw_labels
            init_head_from_classes(head, feed.prior, feed.centre_features(), labels)  # type: ignore[arg-type]
        starts["the pretrained classifier's rows"] = {k: v.clone() for k, v in head.state_dict().items()}
    return [
        (f"{views} from {start}", rows, state)
        for views, rows in feed.solve_candidates()
        for start, state in starts.items()
    ]


def rank(point: head_solver.Point) -> tuple[float, float]:
    """The best held-out score first, then the lowest held-out loss (NaN last)."""
    score = point.score if math.isfinite(point.score) else -math.inf
    return score, -point.loss if math.isfinite(point.loss) else -math.inf


def describe(solved: Solved, monitor: str, held_out: str) -> str:
    return (
        f"solved in {solved.seconds:.1f} s on {solved.how}, C={solved.point.c:.2g}: the best {monitor} on "
        f"{held_out} of {solved.tried}"
    )


def solve_head(run: Any, epoch: int) -> dict[str, Any]:
    """The frozen epochs as one solve (0-based ``epoch`` is the first of them), put where the epochs would
    have left the run: the schedule advanced past them, the EMA weights equal to the solution. Returns the
    train metrics of the epoch line that stands for them."""
    feed = run.feed
    assert isinstance(feed, CachedFeatures)
    set_epoch = getattr(run.criterion, "set_epoch", None)
    if callable(set_epoch):  # a loss with a schedule of its own: as at the last frozen epoch
        set_epoch(run.features.frozen_epochs - 1)
    checkpoint = run.checkpoints.cfg
    judge = head_solver.judge_for(checkpoint.monitor, checkpoint.mode, run.evaluation.metric_fns)
    solved = solve_on(feed, run.criterion, judge, run.cfg.run.seed, run.device)
    head = run.model.get_submodule(feed.head_name)
    if run.ema is not None:
        run.ema.module.get_submodule(feed.head_name).load_state_dict(head.state_dict())
    skipped = run.features.frozen_epochs - epoch
    advance(run.optimizer, run.scheduler, skipped * run.steps_per_epoch)
    held_out = "val" if feed.data.val is not None else f"{head_solver.FOLDS}-fold over train"
    log(
        f"kiln: head {describe(solved, checkpoint.monitor, held_out)}. It stands for the {skipped} frozen "
        "epoch(s) (trainer.frozen_head=epochs trains them by optimizer steps)"
    )
    return {**solved.train_metrics(head, run.criterion), "solved_epochs": skipped}


def start_metrics(feed: CachedFeatures, model: torch.nn.Module, solved: Solved, criterion: Criterion) -> dict:
    """The epoch-0 line of a run that fine-tunes from a solved head: its train metrics, and its val metrics
    from the val split's cached features (the backbone has not moved yet: the live pass's numbers)."""
    head = model.get_submodule(feed.head_name)
    val = {"loss": math.nan, "acc": math.nan}
    evaluation = feed.eval_inputs("val", model)
    if evaluation is not None:
        val = evaluate(
            evaluation.model, evaluation.loader, evaluation.transform, evaluation.options, feed.dist
        )
    extra = {f"val_{k[7:]}": v for k, v in val.items() if k.startswith("metric_")}
    return {
        "epoch": 0,
        "step": 0,
        **solved.train_metrics(head, criterion),
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        **extra,
        "validated": True,
    }
