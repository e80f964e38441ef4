"""Exponential moving average of the weights: evaluated and checkpointed in place of the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Follows ``model`` (the plain module, whatever wraps it for training: DDP and torch.compile share
    its parameters, and a frozen backbone's head trains them in place)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        self.source = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    @torch.no_grad()
    def update(self) -> None:
        model = self.source
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)  # one fused kernel over all parameters
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)  # BatchNorm statistics: take the live ones

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
