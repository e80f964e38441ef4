"""The end of a search: a ranked table, best.yaml (ready for `kiln train -c`), the best checkpoint's path,
and a PNG of the monitored metric per epoch for every trial."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from kiln.atomic import write_atomic
from kiln.config import dump_config
from kiln.paths import RunDir
from kiln.tuning.search import Search, trial_index
from kiln.tuning.space import resolved


def _best_value(history: list[float], mode: str) -> float:
    finite = [v for v in history if v == v]
    return (max(finite) if mode == "max" else min(finite)) if finite else math.nan


def _index(r: Any) -> int:
    return trial_index(str((r.metrics or {}).get("trial_id") or "") or Path(r.path).name)


def error_line(err: Any) -> str | None:
    """The one line that says why a trial failed (Ray wraps it in its own traceback)."""
    if not err:
        return None
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith(" ")]
    last = lines[-1] if lines else type(err).__name__
    return re.sub(r"^[\w.]*(Error|Exception|Stopped|Interrupted)[^:]*: ", "", last)[:300] or last


def _status(error: str | None, unfinished: bool, cut: bool) -> str:
    """unfinished: an interrupt stopped it, and --resume continues it from its last epoch."""
    if error:
        return "failed"
    return "unfinished" if unfinished else "stopped early" if cut else "finished"


def _row(r: Any, search: Search, space: dict[str, Any], unfinished: set[str]) -> dict[str, Any]:
    df = r.metrics_dataframe
    by_epoch: dict[int, float] = {}
    if df is not None and search.monitor in df and "epoch" in df:
        # a restored trial repeats the epochs after its checkpoint: the later report of each wins
        for epoch, value in zip(df["epoch"], df[search.monitor], strict=True):
            by_epoch[int(epoch)] = float(value)
    history = [by_epoch[e] for e in sorted(by_epoch)]
    run = RunDir(Path(r.path) / "run")
    best = _best_value(history, search.mode)
    if run.summary.is_file():  # the trial's own verdict: what `kiln train -c best.yaml` reports too
        best = json.loads(run.summary.read_text()).get("best_metric", best)
    index = _index(r)
    name, error = f"trial_{index:05d}", error_line(r.error)
    cut = len(history) < search.epochs and error is None and name not in unfinished
    return {
        "trial": name,
        "index": index,
        "config": {k: r.config[k] for k in space if k in r.config},
        "best": best,
        "epochs": len(history),
        "status": _status(error, name in unfinished, cut),
        "stopped_early": cut,
        "error": error,
        "history": history,
        "run_dir": str(run.root),
    }


def summarize(
    results: Any, search: Search, space: dict[str, Any], out: Path, unfinished: set[str] | None = None
) -> dict[str, Any]:
    """results.json, best.yaml and trials.png of the trials so far (``unfinished``: cut short by an
    interrupt, ranked with the others but never the source of best.yaml unless nothing else ran)."""
    unfinished = unfinished or set()
    # a result without a config never started
    rows = [_row(r, search, space, unfinished) for r in results if r.config is not None]
    sign = -1 if search.mode == "max" else 1
    rows.sort(
        key=lambda row: (
            math.isnan(row["best"]),
            sign * row["best"] if row["best"] == row["best"] else 0,
            row["index"],
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    # best.yaml: the best trial that trained to the end (a stopped one's metric came from fewer epochs)
    finished = [r for r in rows if r["status"] == "finished" and r["best"] == r["best"]]
    best = (finished or rows or [None])[0]
    if best is not None:
        cfg = resolved(search.config, search.trial_overrides(best["config"]))
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": None, "name": "tuned"})})
        dump_config(cfg, out / "best.yaml")
    summary = {
        "monitor": search.monitor,
        "mode": search.mode,
        "seed": search.seed,
        # all None (and NaN): interrupted before any trial started
        "best_trial": best["trial"] if best else None,
        "best_metric": best["best"] if best else math.nan,
        "best_checkpoint": str(RunDir(Path(best["run_dir"])).best) if best else None,
        "best_config": str(out / "best.yaml") if best else None,
        "trials": rows,
    }
    write_atomic(out / "results.json", json.dumps(summary, indent=2, default=str))
    plot(rows, search, out / "trials.png")
    return summary


def table(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    keys = list(rows[0]["config"]) if rows else []
    head = ["rank", "trial", *keys, summary["monitor"], "epochs", "status", "error"]
    lines = [head]
    for i, r in enumerate(rows, 1):
        vals = [
            yaml.safe_dump(r["config"].get(k), default_flow_style=True).strip().removesuffix("...").strip()
            for k in keys
        ]
        err = (r["error"] or "")[:100]
        lines.append([str(i), r["trial"], *vals, f"{r['best']:.4f}", str(r["epochs"]), r["status"], err])
    widths = [max(len(str(line[c])) for line in lines) for c in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines)


def plot(rows: list[dict[str, Any]], search: Search, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, r in enumerate(rows):
        if r["history"]:
            style = {"stopped early": "--", "unfinished": ":"}.get(r["status"], "-")
            ax.plot(
                range(1, len(r["history"]) + 1),
                r["history"],
                style,
                marker="o",
                ms=3,
                label=f"#{i + 1} {r['trial']}" + ("" if r["status"] == "finished" else f" ({r['status']})"),
            )
    ax.set(
        xlabel="epoch",
        ylabel=search.monitor,
        title=f"{search.monitor} per trial (dashed: stopped by the scheduler; dotted: unfinished)",
    )
    ax.grid(alpha=0.3)
    if any(r["history"] for r in rows):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
