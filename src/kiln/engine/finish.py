"""The end of a run: the best checkpoint read back, multi-label thresholds tuned on val (and kept in the
checkpoints, for every export), the test split measured, summary.json; and run_info.json, what it takes
to reproduce the run."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import torch

import kiln.checkpoint as ckpt
from kiln.atomic import write_atomic
from kiln.console import log
from kiln.engine import distributed
from kiln.engine.evaluate import hits, plain_loss, predict
from kiln.engine.run import Run
from kiln.metrics import Outputs


def finish(run: Run, stop_reason: str | None) -> dict[str, Any]:
    """Measure the test split on the *best* checkpoint (read back from disk) and write summary.json."""
    checkpoints = run.checkpoints
    summary: dict[str, Any] = {
        "best_epoch": checkpoints.best_epoch,
        "best_metric": checkpoints.best,
        "monitor": run.checkpoints.cfg.monitor,
        "epochs_run": run.state.epoch,
        "steps": run.state.step,
        "stopped_early": stop_reason,
        "classes": list(run.data.classes),
        "best_checkpoint": str(run.dir.best),
        "world_size": run.dist.world,
        "skipped_steps": run.state.skipped_steps,
        "skipped_samples": run.data.skipped,
        "init_seconds": run.init_seconds,
    }
    distributed.barrier(run.dist)  # rank 0 has finished writing best.pt
    if not run.dir.best.exists():
        return write_summary(run, summary)
    ckpt.unwrap(run.eval_model).load_state_dict(ckpt.load(run.dir.best)["model_state_dict"])
    thresholds = None
    if run.data.multi_label:  # per-class thresholds tuned on val, kept in the checkpoints for every export
        thresholds = tune_thresholds(run)
        summary["thresholds"] = dict(zip(run.data.classes, thresholds.tolist(), strict=True))
        checkpoints.amend(recipe=run.recipe(thresholds.tolist()).to_json())
    if run.data.test is not None:
        t0 = time.perf_counter()
        evaluation = run.feed.eval_inputs("test", run.eval_model)
        assert evaluation is not None
        logits, labels, idx = predict(
            evaluation.model, evaluation.loader, evaluation.transform, evaluation.options, run.dist
        )  # all ranks
        outputs = Outputs(logits, labels, idx, list(run.data.classes), thresholds)
        test = {
            "loss": plain_loss(logits, labels).item(),
            "accuracy": hits(logits, labels).mean().item(),
            "num_samples": len(labels),
            "seconds": time.perf_counter() - t0,
        }
        if run.data.multi_label:
            report = outputs.report
            test.update(
                map=report["map_macro"],
                macro_f1=report["macro"]["f1"],
                subset_accuracy=report["subset_accuracy"],
            )
        summary["test"] = test
        extra = f", mAP {test['map']:.4f}" if "map" in test else ""
        log(
            f"kiln: test accuracy {test['accuracy']:.4f}{extra} (loss {test['loss']:.4f}, "
            f"{test['num_samples']} "
            f"images, best epoch {checkpoints.best_epoch})"
        )
        run.callbacks.eval_end("test", {"loss": test["loss"], "acc": test["accuracy"]}, outputs)
    return write_summary(run, summary)


def write_summary(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    if run.dist.is_main:
        write_atomic(run.dir.summary, json.dumps(summary, indent=2))
    return summary


def tune_thresholds(run: Run) -> torch.Tensor:
    """Multi-label: the threshold of each class that maximises its F1 on the val split (0.5 without one)."""
    from kiln.metrics.multilabel import UNTUNED
    from kiln.metrics.multilabel import tune_thresholds as tune

    evaluation = run.feed.eval_inputs("val", run.eval_model)
    if evaluation is None:
        log("kiln: no val split to tune the multi-label thresholds on; every class uses 0.5")
        return torch.full((len(run.data.classes),), UNTUNED, dtype=torch.float64)
    logits, labels, _ = predict(
        evaluation.model, evaluation.loader, evaluation.transform, evaluation.options, run.dist
    )
    thresholds, f1 = tune(logits.sigmoid(), labels)
    log(
        f"kiln: multi-label thresholds tuned on {len(labels):,} val images (F1 per class, mean "
        f"{f1.mean():.4f})"
    )
    return thresholds


def write_run_info(run: Run) -> None:
    """What it takes to reproduce the run: versions, the project's git commit, and a dataset fingerprint."""
    commit = dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": commit,
        "git_dirty": dirty,
        "cwd": os.getcwd(),
        "dataset_fingerprint": run.data.fingerprint,
        "classes": list(run.data.classes),
    }
    write_atomic(run.dir.run_info, json.dumps(info, indent=2))
