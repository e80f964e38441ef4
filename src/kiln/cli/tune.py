"""`kiln tune`."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> int:
    from kiln.registry import add_project_path
    from kiln.tuning.space import load_space, resolved

    config = str(Path(args.config).resolve())
    add_project_path(config)
    space = load_space(args.space, config, args.overrides)  # bad keys/values fail here, before any trial
    cfg = resolved(config, args.overrides)
    summary, stop, samples = search(args, config, cfg, space)
    report(summary)
    if stop.signum is None:
        return 0
    done = sum(t["status"] != "unfinished" for t in summary["trials"])
    again = shlex.join(["kiln", *(a for a in sys.argv[1:] if a != "--resume"), "--resume"])
    print(
        f"interrupted ({signal.Signals(stop.signum).name}): {done} of {samples} trials done; "
        f"continue the search with: {again}",
        flush=True,
    )
    sys.stderr.flush()
    os._exit(
        stop.exit_code
    )  # everything is written and Ray is down: no interpreter teardown (~1 s) to wait for


def search(
    args: argparse.Namespace, config: str, cfg: Any, space: dict[str, Any]
) -> tuple[dict[str, Any], Any, int]:
    """Run the search (Ray Tune) and write its table; returns (summary, the stop handler, samples)."""
    from kiln.engine.recipe import watched_metric
    from kiln.errors import Interrupted
    from kiln.paths import hold, output_dir
    from kiln.tuning.ray_tune import tune_search
    from kiln.tuning.report import summarize
    from kiln.tuning.search import Search
    from kiln.tuning.stop import StopOnSignal

    monitor, mode = watched_metric(cfg)
    seed = cfg.run.seed if args.seed is None else args.seed
    plan = Search(
        config,
        list(args.overrides),
        monitor,
        mode,
        math.ceil(cfg.trainer.epochs),
        args.cpus_per_trial,
        args.gpus_per_trial,
        seed,
        args.max_failures,
    )
    out = output_dir(args.out, "--out")  # before Ray starts: a file, or a folder of the user's, is refused
    # a second search into the same folder is refused; SIGINT/SIGTERM end the search, keeping the table
    with hold(out, "--out", "a kiln tune search"), StopOnSignal() as stop:
        try:
            outcome = tune_search(
                plan,
                space,
                args.samples,
                args.scheduler,
                args.max_concurrent,
                args.address,
                out,
                args.resume,
                stop,
            )
        except KeyboardInterrupt:  # a signal while Ray was starting: no trial ran, nothing to keep
            raise Interrupted("interrupted before the first trial started", stop.exit_code) from None
        return summarize(outcome.results, plan, space, out, outcome.unfinished), stop, outcome.samples


def report(summary: dict[str, Any]) -> None:
    from kiln.tuning.report import table

    print(table(summary))
    failed = [t for t in summary["trials"] if t["error"]]
    if failed:
        print(
            f"{len(failed)} trial(s) failed (their errors are in the table and results.json); the search "
            "went on"
        )
    monitor = summary["monitor"]
    if summary["best_metric"] != summary["best_metric"]:  # NaN: no trial reported one
        print(f"no trial has reported {monitor} yet")
        return
    print(f"best: {summary['best_trial']} {monitor}={summary['best_metric']:.4f}")
    print(f"best config:     {summary['best_config']}   (kiln train -c {summary['best_config']})")
    print(f"best checkpoint: {summary['best_checkpoint']}   (kiln eval --checkpoint ...)")
    print(f"plot: {Path(summary['best_config']).parent / 'trials.png'}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune",
        help="hyperparameter search with Ray Tune (ASHA)",
        description="Search the space in SPACE.yaml (config keys -> distributions); every trial is "
        "`kiln train -c CONFIG` with the sampled overrides. Needs: pip install 'torchkiln[tune]'.",
    )
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument(
        "--space", required=True, help="YAML: key: {loguniform|uniform|randint|choice|grid: [...]}"
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="trials to sample (times each grid combination)"
    )
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument(
        "--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)"
    )
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    parser.add_argument(
        "--address", help="join a Ray cluster: auto, or ray://HEAD:10001 (default: a local Ray)"
    )
    parser.add_argument(
        "--out", default="runs/tune", help="results folder (an absolute storage path for Ray)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    parser.add_argument(
        "--seed",
        type=int,
        help="samples the trials and seeds each one (default: the config's run.seed); "
        "one seed, one search: the same trials in the same order with the same results on CPU",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="stop the search after this many failed trials (default 0: never stop for failures)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every trial")
    parser.set_defaults(func=run)
