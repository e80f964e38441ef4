"""The end of a search: a ranked table, best.yaml (ready for `kiln train -c`), the best checkpoint's path,
and a PNG of the monitored metric per epoch for every trial."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from kiln.config import dump_config
from kiln.paths import RunDir
from kiln.tuning.ray_tune import Search
from kiln.tuning.space import override, resolved


def _best_value(history: list[float], mode: str) -> float:
    finite = [v for v in history if v == v]
    return (max(finite) if mode == "max" else min(finite)) if finite else math.nan


def summarize(results: Any, search: Search, space: dict[str, Any], out: Path) -> dict[str, Any]:
    rows = []
    for r in results:
        df = r.metrics_dataframe
        by_epoch: dict[int, float] = {}
        if df is not None and search.monitor in df and "epoch" in df:
            # a restored trial repeats the epochs after its checkpoint: the later report of each wins
            for epoch, value in zip(df["epoch"], df[search.monitor], strict=True):
                by_epoch[int(epoch)] = float(value)
        history = [by_epoch[e] for e in sorted(by_epoch)]
        sampled = {k: r.config[k] for k in space if k in r.config}
        rows.append({
            "trial": str((r.metrics or {}).get("trial_id") or Path(r.path).name), "config": sampled, "best": _best_value(history, search.mode),
            "epochs": len(history), "stopped_early": len(history) < search.epochs and r.error is None,
            "error": str(r.error).splitlines()[0] if r.error else None, "history": history,
            "run_dir": str(Path(r.path) / "run"),
        })  # fmt: skip
    sign = -1 if search.mode == "max" else 1
    rows.sort(
        key=lambda row: (math.isnan(row["best"]), sign * row["best"] if row["best"] == row["best"] else 0)
    )
    out.mkdir(parents=True, exist_ok=True)
    best = rows[0]
    cfg = resolved(search.config, [*search.overrides, *(override(k, v) for k, v in best["config"].items())])
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": None, "name": "tuned"})})
    dump_config(cfg, out / "best.yaml")
    summary = {"monitor": search.monitor, "mode": search.mode, "best_trial": best["trial"], "best_metric": best["best"],
               "best_checkpoint": str(RunDir(Path(best["run_dir"])).best),
               "best_config": str(out / "best.yaml"), "trials": rows}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(rows, search, out / "trials.png")
    return summary


def table(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    keys = list(rows[0]["config"]) if rows else []
    head = ["rank", "trial", *keys, summary["monitor"], "epochs", "stopped early"]
    lines = [head]
    for i, r in enumerate(rows, 1):
        vals = [yaml.safe_dump(r["config"][k], default_flow_style=True).strip().removesuffix("...").strip()
                for k in keys]  # fmt: skip
        status = "error" if r["error"] else ("yes" if r["stopped_early"] else "no")
        lines.append([str(i), r["trial"], *vals, f"{r['best']:.4f}", str(r["epochs"]), status])
    widths = [max(len(str(line[c])) for line in lines) for c in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines)


def plot(rows: list[dict[str, Any]], search: Search, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, r in enumerate(rows):
        if r["history"]:
            style = "--" if r["stopped_early"] else "-"
            ax.plot(range(1, len(r["history"]) + 1), r["history"], style, marker="o", ms=3,
                    label=f"#{i + 1} {r['trial']}" + (" (stopped)" if r["stopped_early"] else ""))  # fmt: skip
    ax.set(
        xlabel="epoch",
        ylabel=search.monitor,
        title=f"{search.monitor} per trial (dashed: stopped by the scheduler)",
    )
    ax.grid(alpha=0.3)
    if any(r["history"] for r in rows):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
