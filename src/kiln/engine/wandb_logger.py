"""Weights & Biases (optional extra): the TensorBoard scalars, the config, the summary and the evaluation
plots, in a run under ``<run dir>/wandb``. ``mode: offline`` needs no network and no login; upload the
run later with ``wandb sync <dir>``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from kiln.config import Config
from kiln.console import log
from kiln.engine.callbacks import Callback, FitInfo
from kiln.engine.logger_base import augmented_grid, keep_rng
from kiln.errors import ConfigError, KilnError


def import_wandb(mode: str) -> Any:
    os.environ.setdefault("WANDB_SILENT", "true")  # no banners, and never an interactive prompt
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # nothing tries the network
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "logging.wandb is set but the wandb package is not installed: "
            "pip install 'torchkiln[wandb]' (or remove logging.wandb)"
        ) from None
    return wandb


class WandbLogger(Callback):
    def __init__(self, cfg: Config, run_dir: Path, every_n_steps: int, images: bool) -> None:
        assert cfg.logging.wandb is not None
        self.wc, self.name, self.run_dir = cfg.logging.wandb, cfg.run.name, Path(run_dir)
        self.every, self.images = every_n_steps, images
        self.run: Any = None
        self.run_id: str | None = None  # saved in checkpoints: an online run resumes the same W&B run
        self.step, self.last_logged = 0, -1

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("run_id"), str):
            self.run_id = state["run_id"]
        if isinstance(state.get("step"), int):
            self.step = state["step"]

    def on_fit_start(self, info: FitInfo) -> None:
        wandb = import_wandb(self.wc.mode)
        resuming = info.start_epoch > 0
        if not resuming:
            self.step, self.run_id = 0, None
        self.last_logged = self.step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # an offline run always starts afresh (offline runs cannot be resumed); online, resume by id
        resume_id = self.run_id if resuming and self.wc.mode == "online" else None
        if wandb.run is not None:  # left over from a fit that raised in this process: close it first
            wandb.run.finish(exit_code=1)
        try:
            with keep_rng():
                self.run = wandb.init(
                    project=self.wc.project,
                    entity=self.wc.entity,
                    mode=self.wc.mode,
                    tags=list(self.wc.tags),
                    dir=str(self.run_dir),
                    name=self.name,
                    config=info.config,
                    id=resume_id,
                    resume="allow" if resume_id else None,
                )
        except Exception as e:  # noqa: BLE001 - wandb raises its own types (no login, no network, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KilnError(
                f"logging.wandb: W&B could not start ({first}); run `wandb login` or set "
                "logging.wandb.mode=offline"
            ) from None
        self.run_id = self.run.id
        where = self.sync_dir() if self.wc.mode == "offline" else self.run.url
        log(f"kiln: W&B run ({self.wc.mode}) -> {where}")
        if self.images and not resuming:
            with keep_rng():
                grid = augmented_grid(info)
            if grid is not None:
                self.run.log({"train/augmented_samples": wandb.Image(grid.permute(1, 2, 0).numpy())}, step=0)

    def sync_dir(self) -> Path:
        return Path(self.run.dir).parent  # <run dir>/wandb/offline-run-<time>-<id>

    def on_batch_end(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if step % self.every or step == self.last_logged:  # only on a step that is a multiple: no host sync
            return
        self.last_logged = step
        self.run.log({"step/train_loss": float(loss), "step/lr": lr}, step=step)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None:
        self.step = int(metrics.get("step", self.step))
        values = {
            f"epoch/{k}": v
            for k, v in metrics.items()
            if k != "step" and isinstance(v, (int, float)) and not math.isnan(v)
        }
        self.run.log(values, step=self.step)
        return None

    def on_eval_end(self, split: str, metrics: dict[str, float], outputs: Any = None) -> None:
        if split != "test":
            return
        import wandb

        row: dict[str, Any] = {f"test/{k}": v for k, v in metrics.items()}
        if outputs is not None and len(outputs.labels) > 0:
            import io

            from PIL import Image

            for name, png in outputs.figures.items():
                row[f"eval/{name}"] = wandb.Image(Image.open(io.BytesIO(png)).convert("RGB"))
            report = outputs.report
            self.run.summary["test/average_precision"] = report["average_precision"]
            self.run.summary["test/per_class"] = report["per_class"]
        self.run.log(row, step=self.step)

    def on_fit_end(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if k != "classes" and v is not None})
        offline = self.wc.mode == "offline"
        sync_dir = self.sync_dir()
        self.run.finish()
        if offline:
            log(f"kiln: W&B run saved offline; upload it with: wandb sync {sync_dir}")
