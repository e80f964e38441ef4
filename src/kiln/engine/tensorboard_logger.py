"""TensorBoard: event files in ``<run dir>/tensorboard``, every scalar against the optimizer step.

Tags: ``step/train_loss`` and ``step/lr`` every ``logging.every_n_steps`` steps; ``epoch/<key>`` for each
key of the epoch's metrics.jsonl line (train/val loss and accuracy, lr, images_per_s, seconds, epoch) at
the epoch's last step; ``test/loss`` and ``test/acc``; images ``train/augmented_samples`` (start),
``eval/confusion_matrix`` and ``eval/pr_curves`` (end); ``pr/<class>`` PR curves; the model graph; and the
hyperparameters with the final metrics (the HPARAMS tab), all in the one run directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from kiln.console import log
from kiln.engine.callbacks import Callback, FitInfo
from kiln.engine.logger_base import augmented_grid, flat, keep_rng, png_array, trace_model


def hparam_value(v: Any) -> bool | int | float | str:
    return v if isinstance(v, (bool, int, float, str)) else str(v)


class TensorBoardLogger(Callback):
    def __init__(self, log_dir: Path, every_n_steps: int, images: bool, graph: bool = True) -> None:
        self.log_dir, self.every, self.images, self.graph = Path(log_dir), every_n_steps, images, graph
        self.writer: Any = None
        self.step = 0  # optimizer steps done (saved in checkpoints: the resume point's global step)
        self.last_logged = -1
        self.config: dict[str, Any] = {}
        self.test: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("step"), int):
            self.step = state["step"]

    def on_fit_start(self, info: FitInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.config = info.config
        resuming = info.start_epoch > 0
        if resuming:
            self.step = info.start_step
        else:
            self.step = 0
            for old in self.log_dir.glob("events.out.tfevents.*"):  # a fresh run replaces the last one's
                old.unlink()
        self.last_logged = self.step
        # purge_step: on resume, TensorBoard hides what a crashed run logged past the checkpoint
        self.writer = SummaryWriter(
            str(self.log_dir), purge_step=self.step + 1 if resuming else None, flush_secs=30
        )
        log(f"kiln: TensorBoard logs in {self.log_dir}; view them with: tensorboard --logdir {self.log_dir}")
        if resuming:
            return  # the images and graph were logged at the start of the first run
        with keep_rng():
            if self.images:
                grid = augmented_grid(info)
                if grid is not None:
                    self.writer.add_image("train/augmented_samples", grid, 0)
            if self.graph:
                trace_model(info.model, info.sample_images, self.writer.add_graph)
        self.writer.flush()

    def on_batch_end(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if step % self.every or step == self.last_logged:  # only on a step that is a multiple: no host sync
            return
        self.last_logged = step
        self.writer.add_scalar("step/train_loss", float(loss), step)  # the one host sync
        self.writer.add_scalar("step/lr", lr, step)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None:
        self.step = int(metrics.get("step", self.step))
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)) and not math.isnan(v):
                self.writer.add_scalar(f"epoch/{k}", v, self.step)
        self.writer.flush()
        return None

    def on_eval_end(self, split: str, metrics: dict[str, float], outputs: Any = None) -> None:
        if split != "test":
            return
        self.test = dict(metrics)
        for k, v in metrics.items():
            self.writer.add_scalar(f"test/{k}", v, self.step)
        if outputs is None or len(outputs.labels) == 0:
            return
        for name, png in outputs.figures.items():
            self.writer.add_image(f"eval/{name}", png_array(png), self.step, dataformats="HWC")
        probs = outputs.probs
        for i, name in enumerate(outputs.classes):
            self.writer.add_pr_curve(f"pr/{name}", outputs.positives(i), probs[:, i], self.step)

    def on_interrupt(self, epoch: int, step: int) -> None:
        """The events so far are written and the file closed now, not by the interpreter's exit (~1 s)."""
        self.writer.close()

    def on_fit_end(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        final: dict[str, float] = {"hparams/epochs_run": float(summary.get("epochs_run") or 0)}
        if summary.get("best_metric") is not None:
            final[f"hparams/best_{summary.get('monitor', 'metric')}"] = float(summary["best_metric"])
        test = summary.get("test") or {}
        for k in ("accuracy", "loss"):
            if k in test:
                final[f"hparams/test_{k}"] = float(test[k])
        hp = {k: hparam_value(v) for k, v in flat(self.config).items()}
        # what SummaryWriter.add_hparams writes, but into this run's own event file (add_hparams would
        # open a second writer in a timestamped subfolder, a separate run in TensorBoard)
        for s in hparams(hp, final):
            self.writer.file_writer.add_summary(s, self.step)
        for k, v in final.items():
            self.writer.add_scalar(k, v, self.step)
        self.writer.close()
