"""Console output: a tqdm bar per epoch when stdout is a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def enabled(setting: str) -> bool:
    return setting == "on" or (setting == "auto" and sys.stdout.isatty())


class EpochBar:
    def __init__(self, epoch: int, epochs: int, total: int, start: int = 0) -> None:
        self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}/{epochs}", leave=False,
                        dynamic_ncols=True, unit="batch")  # fmt: skip
        self.last = start

    def update(self, position: int, **values: Any) -> None:
        self.bar.update(position - self.last)
        self.last = position
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)

    def close(self) -> None:
        self.bar.close()


QUIET = False  # set on DDP ranks other than 0: one process speaks


def log(msg: str) -> None:
    if not QUIET:
        print(msg, flush=True)


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    return (f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  lr {m['lr']:.3g}  "
            f"{m['images_per_s']:,.0f} img/s  {m['seconds']:.2f}s")  # fmt: skip
