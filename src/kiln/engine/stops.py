"""Where Ctrl-C/SIGTERM ends a training epoch (``Stops``), and the pieces that make a stop inside a step
cheap: ``LongSteps`` cuts a long forward or backward, ``StepStart`` puts the loader and the RNG back to where
the abandoned step began."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch
from torch import nn

from kiln import signals
from kiln.engine.distributed import Dist


def never() -> bool:
    return False


class Stops:
    """Where Ctrl-C/SIGTERM ends an epoch: at a step boundary, with the one exception every phase stops with
    (``signals.Interrupt``; the trainer's one handler saves ``last.pt``). One process abandons the step it
    is in (a forward or backward of seconds included, ``LongSteps``) and goes back to where it began, so a
    stop costs a forward or a backward at most; under DDP the ranks must stop at the same step, which they
    agree on when the running loss is reduced (``_Tally.flush``)."""

    def __init__(
        self,
        model: nn.Module,
        loader: Any,
        optimizer: torch.optim.Optimizer,
        should_stop: Callable[[], bool],
        dist: Dist,
        start: int,
    ) -> None:
        self.loader, self.optimizer, self.should_stop = loader, optimizer, should_stop
        self.alone = not dist.enabled
        self.step_start = StepStart(start)
        self.long = LongSteps(model, should_stop if self.alone else never)

    def begin(self, position: int) -> None:
        """An optimizer step begins at batch ``position``."""
        self.step_start = StepStart(position)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Around a step's forward and backward: a stop asked inside a long one cuts it (one process)."""
        with self.long.watch() as watched:
            yield
        if watched.cut:
            self.abandon()

    def check(self) -> None:
        """Inside a step: abandon it if a stop was asked (one process)."""
        if self.alone and self.should_stop():
            self.abandon()

    def abandon(self) -> NoReturn:
        self.optimizer.zero_grad(set_to_none=True)  # a half-done backward's and the window's gradients
        self.step_start.rewind(self.loader)
        signals.stop()

    def at_boundary(self, agreed: bool) -> None:
        """After an optimizer step: stop here if asked (``agreed``: all ranks were asked, under DDP)."""
        if agreed or (self.alone and self.should_stop()):
            signals.stop()


class StepCut(Exception):
    """Raised by a hook inside a watched step's forward or backward when a stop is asked for."""


class LongSteps:
    """Ctrl-C during a step of seconds (a big model on a CPU): Python runs the signal handler only between
    bytecodes, and a backward is one call into autograd's engine, so without a look inside it a stop waits
    for the whole backward (4.5 s of a 7 s efficientnet step, measured). While steps are long, a forward
    hook on every leaf module asks ``should_stop`` and hangs a gradient hook on its output that asks again
    during the backward; either raises ``StepCut``. Short steps go unwatched: hooks cost ~3 us a module."""

    LONG_S = 0.25  # a step longer than this is watched from the next one on
    BIG = 1_000_000  # parameters: a model this big is watched from its first step (it may take seconds)

    def __init__(self, model: nn.Module, should_stop: Callable[[], bool]) -> None:
        self.leaves = [m for m in model.modules() if next(m.children(), None) is None]
        self.long = sum(p.numel() for p in model.parameters()) >= self.BIG
        self.should_stop, self.cut = should_stop, False

    def _ask(self, *_: Any) -> None:
        if self.should_stop():
            raise StepCut

    def _forward_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self._ask()
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._ask)

    @contextlib.contextmanager
    def watch(self) -> Iterator[LongSteps]:
        """``cut`` is True after the block when a hook ended it (the exception is swallowed here)."""
        self.cut, t0 = False, time.perf_counter()
        hooks = [m.register_forward_hook(self._forward_hook) for m in self.leaves] if self.long else []
        try:
            yield self
        except StepCut:
            self.cut = True
        finally:
            for hook in hooks:
                hook.remove()
            self.long = time.perf_counter() - t0 > self.LONG_S


class StepStart:
    """Where an optimizer step began: the loader's position and the global torch RNG (dropout draws from
    it; augmentation has generators of its own). An abandoned step goes back here, so the checkpoint
    written on an interrupt is the state after the last whole step, and a resumed run repeats this one."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.rng = torch.get_rng_state()  # 5 KB copy, ~2 us: nothing next to a step
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None

    def rewind(self, loader: Any) -> None:
        loader.load_state_dict({"epoch": loader.state_dict()["epoch"], "position": self.position})
        torch.set_rng_state(self.rng)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)
