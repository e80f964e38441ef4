"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks"), as
fastai's ``lr_find`` runs it: train from the config's starting point while the LR grows exponentially from
``start`` to ``end``, record each step's loss, smooth it and suggest an LR from the curve.

The run is built exactly as ``kiln train`` builds it (``setup.build_run``: the same checks, model, optimizer
groups, loss and feed, so a frozen backbone trains its head on cached features here too) and each step is
the training loop's own (``loop.forward_loss``, ``loop.backward``, ``loop.optimizer_step``). Nothing of the
run is kept: no checkpoint, no metrics.jsonl, no lock on the run folder; only ``lr_find.png`` and
``lr_find.json`` in the output folder. Ctrl-C ends it at once and writes nothing.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln import signals
from kiln.atomic import write_atomic
from kiln.config import Config
from kiln.console import Progress, log
from kiln.engine.distributed import Dist
from kiln.engine.feeds import CachedFeatures, EpochInputs
from kiln.engine.loop import backward, forward_loss, optimizer_step, train_mode
from kiln.engine.precision import out_of_memory, resolve_device
from kiln.engine.run import Run
from kiln.engine.setup import build_run, seed_everything
from kiln.errors import DataError, Interrupted, KilnError, TrainingStopped
from kiln.optim import lr_scale
from kiln.paths import RunDir
from kiln.registry import import_user_modules

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RangeTest:
    start: float = 1e-7  # the first step's LR, in optimizer.lr's units (fastai's defaults)
    end: float = 10.0  # the LR the growth heads for (the last step is one growth factor short of it)
    steps: int = 100  # optimizer steps
    beta: float = 0.98  # the loss's moving average
    diverged: float = 4.0  # stop once the smoothed loss exceeds this times its minimum

    def check(self) -> None:
        if not 0 < self.start < self.end:
            raise KilnError(f"--start {self.start:g} and --end {self.end:g}: need 0 < start < end")
        if self.steps < 10:  # fastai sets the first tenth and the last 5 points aside before suggesting
            raise KilnError(f"--steps {self.steps}: too few to read a curve from; use at least 10")

    def lr(self, step: int) -> float:
        """The LR of optimizer step ``step`` (0-based): exponential, as fastai's SchedExp at step/steps."""
        return self.start * (self.end / self.start) ** (step / self.steps)


@dataclass
class Curve:
    lrs: list[float] = field(default_factory=list)  # optimizer.lr of each step (before lr_mult)
    losses: list[float] = field(default_factory=list)  # each step's train loss (its batches' mean)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "steps"  # "steps", "diverged" (smoothed > 4x its minimum) or "non-finite"


class SmoothLoss:
    """fastai's AvgSmoothLoss: an exponential moving average of the losses divided by 1 - beta^n, so the
    first values are not pulled towards the average's start at 0 (Adam's bias correction)."""

    def __init__(self, beta: float) -> None:
        self.beta, self.average, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        return self.average / (1 - self.beta**self.count)


def valley(losses: np.ndarray) -> int:
    """fastai 2.7's ``valley``: the index of the suggestion inside the longest valley of the curve. The
    valley ends at the first point with the longest strictly falling sequence of losses ending there
    (points may be skipped), and starts that sequence's length before; the suggestion lies half way
    through its middle third (start + int(len / 3) + int(len / 6))."""
    falling = np.ones(len(losses), dtype=np.int64)  # longest strictly falling sequence ending at i
    for i in range(1, len(losses)):
        higher = losses[:i] > losses[i]
        if higher.any():
            falling[i] = falling[:i][higher].max() + 1
    end = int(falling.argmax())  # the first index of the maximum, as fastai's strict `<` keeps
    start = end - int(falling[end])
    sections = (end - start) / 3
    # a valley of 2 points at the very start gives -1, which fastai's indexing wraps to the last point
    return max(start + int(sections) + int(sections / 2), 0)


def steep(lrs: np.ndarray, losses: np.ndarray) -> int:
    """fastai's ``steep``: the index where the loss falls fastest per log-LR (that segment's left end)."""
    return int((np.diff(losses) / np.diff(np.log(lrs))).argmin())


def suggest(curve: Curve, steps: int) -> dict[str, Any] | None:
    """fastai's suggestions from the smoothed curve without its first tenth (the average's warm-up) and
    its last 5 points (past the divergence): ``valley``, ``steep`` and ``minimum/10``, with the points
    the plot marks. None when fewer than 2 points remain (the loss diverged at once)."""
    lo, hi = steps // 10, len(curve.smoothed) - 5
    if hi - lo < 2:
        return None
    lrs, losses = np.asarray(curve.lrs[lo:hi]), np.asarray(curve.smoothed[lo:hi])
    picks = {"valley": valley(losses), "steep": steep(lrs, losses), "minimum": int(losses.argmin())}
    marks = {name: [float(lrs[i]), float(losses[i])] for name, i in picks.items()}
    lr = {"valley": marks["valley"][0], "steep": marks["steep"][0], "minimum/10": marks["minimum"][0] / 10}
    return {"lr": lr, "marks": marks}


def epochs_of_batches(run: Run) -> Iterator[tuple[EpochInputs, int, int, bool, Batch]]:
    """The training batches, epoch after epoch, each with (inputs, epoch, index, whether it ends the
    epoch). The range test measures the run's first phase: past trainer.unfreeze's epoch it starts that
    phase's epochs again (the cached features' views cycle on), the frozen parameters still frozen."""
    phase = run.unfreezing.epoch or None  # the epochs before it (None: no phase ends)
    for epoch in itertools.count():
        inputs = run.feed.epoch_inputs(epoch % phase if phase else epoch)
        inputs.loader.set_epoch(epoch)
        batches = len(inputs.loader)
        if not batches:
            raise DataError("data: the train split has no batches; the range test has nothing to train on")
        train_mode(inputs.model, inputs.frozen_bn)
        for i, batch in enumerate(inputs.loader):
            yield inputs, epoch, i, i + 1 == batches, batch


def train_step(run: Run, batches: Iterator[tuple[EpochInputs, int, int, bool, Batch]]) -> float:
    """One optimizer step over trainer.accumulate batches (fewer at an epoch's end, as in training);
    returns their mean loss, or the first non-finite one (then no step is taken)."""
    scaler = run.scaler if run.scaler.is_enabled() else None
    losses = []
    while True:
        inputs, epoch, i, last, batch = next(batches)
        loss, _ = forward_loss(inputs.model, run.criterion, inputs.transform, batch, epoch, i, inputs.options)
        value = float(loss.detach())  # one host read per batch: 100 steps, not a hot loop
        if not math.isfinite(value):
            return value
        backward(loss, scaler, inputs.options.accumulate)
        losses.append(value)
        if (i + 1) % inputs.options.accumulate == 0 or last:
            optimizer_step(inputs.model, run.optimizer, scaler, inputs.options.grad_clip)
            return sum(losses) / len(losses)


def range_test(run: Run, test: RangeTest) -> Curve:
    """Train ``run``'s model for ``test.steps`` optimizer steps, every param group at its own lr_mult times
    the step's LR; stop early when the smoothed loss diverges or the loss is not finite. The run's own
    schedule, EMA and callbacks take no part. Ctrl-C/SIGTERM: ``Interrupted`` at once."""
    if run.unfreezing.starts(0):
        run.unfreeze()  # trainer.unfreeze at epoch 1: everything trains from the start
    run.feed.epoch_inputs(0)  # the decode or the feature pass, each its own phase, before the steps
    scale, curve, smooth = (
        lr_scale(run.cfg.optimizer, run.cfg.data.batch_size),
        Curve(),
        SmoothLoss(test.beta),
    )
    batches = epochs_of_batches(run)
    desc = f"LR range test: {test.steps} steps, lr {test.start:.0e} -> {test.end:.0e}"
    try:
        with Progress(desc, test.steps, "step") as progress:
            for step in range(test.steps):
                lr = test.lr(step)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr * scale * group.get("lr_mult", 1.0)
                loss = train_step(run, batches)
                if not math.isfinite(loss):
                    curve.stopped = "non-finite"
                    break
                curve.lrs.append(lr)
                curve.losses.append(loss)
                curve.smoothed.append(smooth.add(loss))
                progress.update(loss=curve.smoothed[-1])
                if curve.smoothed[-1] > test.diverged * min(curve.smoothed):
                    curve.stopped = "diverged"
                    break
    except signals.Interrupt:
        raise Interrupted(
            f"interrupted at step {len(curve.lrs) + 1} of {test.steps} of the LR range test; no "
            "lr_find.json or .png was written (run it again to measure the whole range)",
            signals.exit_code(),
        ) from None
    return curve


def check_out(out: Path) -> None:
    """Before any work: ``out`` must be creatable (created only when the results are written)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise KilnError(f"--out: cannot write to {out} ({existing} is not a writable folder); choose another")


def plot(curve: Curve, found: dict[str, Any] | None, title: str) -> bytes:
    """Loss against LR (log x): each step's loss, the smoothed curve and the suggestions, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        ax.plot(curve.lrs, curve.losses, ".", ms=3, color="0.7", label="loss per step")
        ax.plot(curve.lrs, curve.smoothed, color="C0", label="smoothed (EMA 0.98, bias-corrected)")
        if found:
            for colour, (name, (lr, loss)) in zip(("C3", "C2", "C1"), found["marks"].items(), strict=True):
                tenth = f" (suggests {lr / 10:.1e})" if name == "minimum" else ""
                ax.plot(lr, loss, "o", color=colour, label=f"{name} {lr:.1e}{tenth}")
            ax.axvline(found["lr"]["valley"], color="C3", ls="--", lw=1)
        low, high = min(curve.smoothed), max(curve.smoothed)
        ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.1 * (high - low + 1e-12))
        ax.set(xscale="log", xlabel="learning rate (optimizer.lr)", ylabel="train loss", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def lr_find(cfg: Config, test: RangeTest, out: Path | None = None) -> dict[str, Any]:
    """The range test for ``cfg``: writes ``lr_find.png`` and ``lr_find.json`` into ``out`` (default
    ``<run.dir>/lr_find``) and returns what the json holds (plus ``png`` and ``json``, their paths)."""
    test.check()
    out = out if out is not None else RunDir(cfg.run_dir).root / "lr_find"
    check_out(out)
    import_user_modules(cfg.imports)
    seed_everything(cfg.run.seed, cfg.run.deterministic, cfg.run.threads)
    device = resolve_device(cfg.run.device)
    try:
        run = build_run(cfg, Dist(), device, [])  # every check of `kiln train`, before any image is read
        what = "its head on cached backbone features" if isinstance(run.feed, CachedFeatures) else "the model"
        log(f"kiln: LR range test of {cfg.model.name} on {cfg.data.source} ({what}) on {device} -> {out}")
        t0 = time.perf_counter()
        curve = range_test(run, test)
        seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError:
        raise out_of_memory(cfg.data.batch_size) from None
    found = suggest(curve, test.steps)
    result = {
        "start": test.start,
        "end": test.end,
        "steps": test.steps,
        "measured": len(curve.lrs),
        "stopped": curve.stopped,
        "seconds": seconds,  # the decode or feature pass included
        "lr_units": "optimizer.lr (each param group trained at it x lr_mult; x batch/per_images if set)",
        "suggestions": found["lr"] if found else None,
        "marks": found["marks"] if found else None,
        "override": f"optimizer.lr={found['lr']['valley']:.1e}" if found else None,
        "lr": curve.lrs,
        "loss": curve.losses,
        "smoothed": curve.smoothed,
    }
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / "lr_find.png", out / "lr_find.json"
    if curve.lrs:
        data = cfg.data.source + (f" ({Path(cfg.data.root).name})" if cfg.data.root else "")
        write_atomic(png, plot(curve, found, f"LR range test: {cfg.model.name} on {data}"))
    write_atomic(js, json.dumps(result, indent=1))
    if found is None:
        raise TrainingStopped(
            f"the loss {'was not finite' if curve.stopped == 'non-finite' else 'diverged'} after "
            f"{len(curve.lrs)} of {test.steps} steps, too few to suggest an LR; the curve is in {js}. "
            "Lower --start (and --end)"
        )
    return {**result, "png": str(png), "json": str(js)}
