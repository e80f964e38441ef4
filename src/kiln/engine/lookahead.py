"""Lookahead (Zhang et al. 2019) as a callback, so its slow weights are saved in every checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kiln.engine.callbacks import Callback


class Lookahead(Callback):
    """Lookahead (Zhang et al. 2019): every k optimizer steps the slow weights move ``alpha`` of the way to
    the fast ones, and the fast weights restart from there. A callback, so its slow weights are
    checkpointed."""

    def __init__(self, model: nn.Module, k: int, alpha: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.slow = [p.detach().clone() for p in self.params]
        self.k, self.alpha, self.last = k, alpha, 0

    @torch.no_grad()
    def on_batch_end(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if step == self.last or step % self.k:
            return
        self.last = step
        torch._foreach_lerp_(self.slow, self.params, self.alpha)
        torch._foreach_copy_(self.params, self.slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, v in zip(self.slow, state["slow"], strict=True):
            s.copy_(v)
        self.last = state["last"]
